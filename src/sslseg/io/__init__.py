"""File formats, and nothing about data sets: each module reads (and writes) one family of formats.

* :mod:`.files`: extensions, file names, the DICOM preamble test.
* :mod:`.pictures`: PNG, JPEG, BMP, TIFF (Pillow); colour to grey (BT.601 luma).
* :mod:`.volumes`: NIfTI (nibabel), MetaImage and NRRD (SimpleITK); voxels to frames and back.
* :mod:`.dicom`: DICOM images and cines (pydicom): pixels as the model sees them, spacing, geometry.
* :mod:`.video`: video decoding (PyAV, the luma plane) and writing.
* :mod:`.intensity`: the one intensity normaliser (``scale``, ``zscore``, ``none``).
* :mod:`.labels`: label maps read from mask files.
* :mod:`.tables`: CSV tables: reading with required columns, the atomic writer, EchoNet-Dynamic's ``FileList.csv``.

Orientation convention, the same for every reader: a volume of voxel axes
``(i, j, k)`` (NIfTI and MetaImage order) is cut along ``axis`` (default 2,
``k``) and each slice is shown with ``j`` as rows and ``i`` as columns, which
is how ITK-SNAP and 3D Slicer display an axial slice up to a flip.  A 2D
picture keeps its rows and columns.  Pixel spacing is ``(row mm, column mm)``.
"""
