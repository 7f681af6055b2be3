"""The `scoresde` command line: solvers | compare | sample | schedule | likelihood | train.

One module per command (scoresde/cli/<command>.py); each parses its options, calls the library
once and prints.  Bad input (an unknown solver, model, SDE or key, bad numbers, a missing or
corrupt file) prints one line naming the value and what is allowed, and exits with code 2; every
output file is written atomically, so Ctrl-C never leaves a half-written one.
"""
from __future__ import annotations

import signal
import sys
import threading

import click

from scoresde import __version__, _signals  # torch is imported inside the commands, so --help answers fast
from scoresde.cli import compare, likelihood, sample, schedule, solvers, train


class _Group(click.Group):
    """Turns every expected failure into one line on stderr and exit code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, owns_process=False, **extra):
        """owns_process: the process ends with this command (the `scoresde` entry point), so the
        signal handlers are not put back: SIGINT and SIGTERM stay ignored through the exit."""
        old = _interrupt_once()
        try:
            rv = super().main(args, prog_name or "scoresde", complete_var, standalone_mode=False, **extra)
        except click.exceptions.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(130)
        except (KeyboardInterrupt, _Interrupted) as e:  # the trainer's carries the step it checkpointed
            click.echo(f"Interrupted: {e}" if str(e) else "Interrupted; no partial output was written.", err=True)
            sys.exit(130)
        except click.ClickException as e:
            ctx_hint = f" (see 'scoresde {e.ctx.info_name} --help')" if getattr(e, "ctx", None) and \
                e.ctx.info_name != "scoresde" else ""
            click.echo(f"Error: {e.format_message()}{ctx_hint}".replace("\n", " "), err=True)
            sys.exit(2)
        except (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError,
                FloatingPointError) as e:
            click.echo(f"Error: {e}".replace("\n", " "), err=True)
            sys.exit(2)
        finally:
            # In a process that ends here, a signal can now only interrupt the exit: as a
            # KeyboardInterrupt in an atexit callback (torch's print a traceback), or, once Python
            # has put SIG_DFL back during finalization, by killing the process (exit -2, not ours).
            # SIG_IGN is the one setting finalization keeps.  In-process (tests) the old handlers return.
            for sig, handler in old.items():
                if owns_process or handler is not None:  # None: set outside Python, nothing to put back
                    signal.signal(sig, signal.SIG_IGN if owns_process else handler)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as e:  # past click's own handler, which would print a bare "Aborted!"
            raise _Interrupted(str(e)) from None


class _Interrupted(Exception):
    pass


def _interrupt_once() -> dict:
    """SIGINT and SIGTERM raise KeyboardInterrupt (so temp files are removed as on Ctrl-C), once:
    after that first one, or after the trainer's own first (_signals.request_stop), the command is
    already stopping, and a further KeyboardInterrupt could only land in its clean-up or the exit
    path and print a traceback, so it is ignored.  Returns the old handlers ({} off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    _signals.reset()

    def interrupt(signum, frame):
        if _signals.stop_requested():
            return
        _signals.request_stop(signal.Signals(signum).name)
        raise KeyboardInterrupt

    return {sig: signal.signal(sig, interrupt) for sig in _signals.STOP_SIGNALS}


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="scoresde")
def cli():
    """Score-based diffusion through SDEs: compare samplers, sample, measure likelihoods, train.

    \b
    Start here:  scoresde compare            (all solvers on the 8-mode ring oracle, ~1 min on CPU)
                 scoresde solvers            (what each solver and time grid does)
    """


for _module in (solvers, compare, sample, schedule, train, likelihood):
    cli.add_command(_module.command)


def main():
    cli.main(prog_name="scoresde", owns_process=True)


if __name__ == "__main__":
    main()
