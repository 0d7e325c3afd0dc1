"""``python -m autodeco.integrations.lm_eval ARGS``: lm-eval's command line with the model ``autodeco`` registered.

Takes exactly ``lm_eval``'s arguments; a bad model_arg is reported in one line (exit status 2), not a traceback.
"""

from __future__ import annotations

import sys

from autodeco.integrations.lm_eval import ModelArgsError, register


def main(argv: list[str] | None = None) -> None:
    if not register():
        sys.exit("autodeco: lm-evaluation-harness is not installed: pip install 'autodeco[lm-eval]'")
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval", *(sys.argv[1:] if argv is None else argv)]
    try:
        cli_evaluate()
    except ModelArgsError as error:
        print(f"autodeco: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
