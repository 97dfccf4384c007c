"""The one exception type for user errors: bad config values, missing files, unreadable images."""


class BibaddiffError(ValueError):
    """A problem with the user's input, stated in one line that names the file, key or value."""
