"""Command lines that must be refused, one after another in one process (a new interpreter's start-up, torch and
DeepSpeed's imports, paid once): each one's exit status and all it wrote to stderr (file descriptor 2, so a library's
own output is caught too).

    python tests/scripts/refusals.py CASES.json   # CASES: a list of argument lists; prints [[status, stderr], ...]
"""

import json
import os
import sys
import tempfile
import traceback


def answer(args: list[str]) -> tuple[int, str]:
    from dnalm.cli import main

    with tempfile.TemporaryFile(mode="w+") as err:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(err.fileno(), 2)
        try:
            try:
                code = main(args)
            except SystemExit as exc:  # argparse's refusals, as `python -m dnalm` exits
                code = exc.code if isinstance(exc.code, int) else 1
            except Exception:  # what a real process would print and exit 1 with
                traceback.print_exc()
                code = 1
            sys.stderr.flush()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        err.seek(0)
        return code, err.read()


if __name__ == "__main__":
    print(json.dumps([answer(args) for args in json.loads(open(sys.argv[1]).read())]))
