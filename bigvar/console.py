"""What the command-line entry points (`python -m bigvar.main`, `python -m bigvar.plan`) print
besides their own output: the libraries' warnings, not their start-up chatter."""
import logging

from absl import logging as absl_logging

from bigvar import storage


class QuietLibraries(logging.Filter):
    """Keeps the libraries' warnings and drops their INFO chatter: orbax narrates every
    checkpoint step, fsspec every file it reads from a bucket, and JAX reports each backend it probed and did not find (libtpu, the IFRT
    proxy) on every start on a CPU or GPU."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("gcsfs"):  # its failed requests, each with a traceback:
            return False  # bigvar.storage reports outages (and raises what is not one) itself
        if "orbax" in record.pathname and record.exc_info and storage.is_transient(record.exc_info[1]):
            return False  # a checkpoint that storage failed: bigvar.train.checkpoints reports it
        return record.levelno >= logging.WARNING or not (
            "orbax" in record.pathname or record.name.startswith("fsspec") or record.pathname.endswith("xla_bridge.py"))


def quiet_library_logs() -> None:
    """Filters absl's handler, the one every logger prints through under `absl.app.run`."""
    handler = absl_logging.get_absl_handler()
    if not any(isinstance(f, QuietLibraries) for f in handler.filters):
        handler.addFilter(QuietLibraries())
