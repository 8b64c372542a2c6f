"""global_local's stage: kept in a buffer for resume, read on the host without waiting for the device."""

import torch

from sslseg.models.build import build_model
from sslseg.pretrain.build import build_method


class Counted(torch.Tensor):
    """A buffer whose reads on the host (``bool``, ``item``) are counted: on a GPU each one is a device sync."""

    reads = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in ("__bool__", "item", "tolist", "__int__", "__float__"):
            cls.reads += 1
        return super().__torch_function__(func, types, args, kwargs or {})


def _method():
    return build_method("global_local", build_model("unet", base_channels=4, depth=3), global_fraction=0.5)


def test_stage_survives_a_load_and_is_read_from_the_host():
    a = _method()
    for step in range(3):
        a.after_step(step, 6)
    assert a.stage == "local"
    b = _method()
    assert b.stage == "global"
    b.load_state_dict(a.state_dict())
    assert b.stage == "local"  # a resumed run continues in the stage it was in
    c = _method()
    c.in_local_stage = c.in_local_stage.as_subclass(Counted)
    Counted.reads = 0
    stages = []
    for step in range(6):
        stages.append(c.stage)
        c.after_step(step, 6)
    assert stages == ["global"] * 3 + ["local"] * 3
    assert Counted.reads <= 1, Counted.reads  # old code: one read every step
