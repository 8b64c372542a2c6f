"""sslseg: self-supervised pretraining and label-efficient fine-tuning for medical segmentation."""

__version__ = "0.1.0"
