"""The one exception type for mistakes in what the user gave us, and how the CLIs report it."""

import sys
import textwrap

EXIT_USER_ERROR = 2  # the exit status of every command-line tool for a UserError


class UserError(Exception):
    """A problem with the user's input (experiment file, --set value, data, workdir).

    The launcher prints the message as one paragraph and exits with status 2, without a
    traceback unless --debug is given. The message says what is wrong and how to fix it.
    """


def did_you_mean(word: str, choices) -> str:
    """' Did you mean 'x'?' for the choice nearest to ``word``, or '' when none is near."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


class RunStopped(Exception):
    """Training stopped early on purpose (a signal, or a loss that became NaN/inf).

    The message says where the run was saved and how to go on; ``exit_code`` is the launcher's
    exit status (128 + the signal number for a signal, 3 for a diverged loss).
    """

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def print_paragraph(text: str) -> None:
    """Prints ``text`` on stderr as one paragraph (how every CLI reports a UserError)."""
    print(textwrap.fill(" ".join(text.split()), width=100, break_on_hyphens=False,
                        break_long_words=False), file=sys.stderr)


def report(error: UserError, debug: bool) -> int:
    """How every CLI ends on a UserError: one paragraph on stderr, and the exit status 2 returned
    (with ``debug`` the error is raised again, for its traceback)."""
    if debug:
        raise error
    print_paragraph(f"error: {error}")
    return EXIT_USER_ERROR
