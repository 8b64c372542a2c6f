"""Running the command line in a test: its exit code and output, and the one-line refusal contract."""

from __future__ import annotations

from sslseg.cli import main


def run(argv, capsys) -> tuple[int, list[str], str]:
    """``main(argv)``: exit code, stderr lines, stdout."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    out = capsys.readouterr()
    return code, out.err.strip().splitlines(), out.out


def refused(argv, capsys, *needles: str) -> str:
    """``argv`` ends in exit 2 with one stderr line (no traceback) holding every needle; that line."""
    code, err, out = run(argv, capsys)
    assert code == 2, (code, err, out[-300:])
    assert len(err) == 1, err
    for needle in needles:
        assert needle in err[0], err[0]
    return err[0]
