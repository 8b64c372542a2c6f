"""The Case contract: facts that change what the pipeline does are typed fields, not ``meta`` keys."""

import re
from pathlib import Path

import numpy as np
import pytest

import sslseg
from sslseg.data.registry import load_dataset
from sslseg.data.sample import NOT_META, Case, Cases, common_dtype
from sslseg.evaluate.inference import case_convention, scored_masks

SRC = Path(sslseg.__file__).parent


@pytest.mark.parametrize("key", sorted(NOT_META))
def test_a_behaviour_key_in_meta_is_refused_with_its_field(key):
    with pytest.raises(TypeError, match=re.escape(NOT_META[key])):
        Case("c", np.zeros((2, 4, 4), np.uint8), meta={key: True})


def test_no_module_reads_or_writes_a_behaviour_key_in_meta():
    # case.meta["volume"] = True after construction goes around the check above: the source says it
    keys = "|".join(re.escape(k) for k in NOT_META)
    pattern = re.compile(rf"""\.meta(\[|\.get\(|\.setdefault\(|\.pop\()\s*["']({keys})["']""")
    hits = [f"{p.relative_to(SRC)}:{n}: {line.strip()}"
            for p in SRC.rglob("*.py")
            for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, hits


def test_fields_drive_the_pipeline():
    frames = np.zeros((3, 4, 4), np.uint8)
    masks = {i: np.zeros((4, 4), np.int64) for i in range(3)}
    cine = Case("cine", frames, masks, phases={"0": "ED"}, modality="us")
    vol = Case("vol", frames, {1: masks[1]}, volume=True, slice_spacing="2.5", scored_masks=masks)
    assert case_convention(cine) == "frame" and case_convention(vol) == "volume"
    assert cine.phases == {0: "ED"} and cine.modality == "US" and vol.slice_spacing == 2.5
    assert scored_masks(vol) is masks and scored_masks(cine) is cine.masks
    # a dtype change keeps every field
    mixed = common_dtype([cine, Case("f", frames.astype(np.float32), volume=True, slice_spacing=2.0)], [])
    assert mixed[0].phases == {0: "ED"} and mixed[0].modality == "US" and mixed[1].volume


def test_a_data_set_says_its_notes_once():
    cases = load_dataset("synthetic-mri", num_cases=2, num_slices=4, size=32)
    assert isinstance(cases, Cases) and cases.skipped == [] and cases.notes == []
    assert all(c.volume and c.modality == "MR" and c.channels == ("T2",) and c.slice_spacing > 0 for c in cases)
    echo = load_dataset("synthetic-echo", num_cases=1, num_frames=4, size=32)
    assert not echo[0].volume and echo[0].modality == "US" and set(echo[0].phases.values()) == {"ED", "ES"}
    assert type(cases[:1]) is list  # a slice is no longer the data set: its notes stay with what was read
