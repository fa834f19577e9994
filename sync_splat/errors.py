"""The one exception type that reaches users as a single line.

Raise `InputError` for anything the user can fix (a bad file, a wrong setting, a missing model): the message names
what is wrong, where (file, property, field) and how to fix it. The command-line front door prints it as one line
and exits non-zero, without a traceback.
"""


class InputError(Exception):
    """A problem with the user's input or setup, explained in one line."""
