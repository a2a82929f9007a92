"""Named errors for data problems; each message says what to do next."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset file is missing and cannot be built or downloaded here."""


class ChecksumError(ValueError):
    """A downloaded file's checksum does not match the published one."""


class DatasetError(ValueError):
    """A dataset file that exists but is corrupt, or holds data that is not what its registry
    entry declares (missing arrays, wrong shapes, NaN/inf, values outside the levels). The
    message names the file, the split and how many rows are bad."""
