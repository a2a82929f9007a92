"""Named errors for data problems; each message says what to do next."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset file is missing and cannot be built or downloaded here."""


class ChecksumError(ValueError):
    """A downloaded file's checksum does not match the published one."""
