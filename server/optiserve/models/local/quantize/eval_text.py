"""The built-in evaluation text and timing prompts of :mod:`.measure`."""

from __future__ import annotations

#: The evaluation text used when a request brings none: plain English prose in the style
#: of software documentation (what small local models, the demo's included, know best).
DEFAULT_EVAL_TEXT = (
    "This module provides a simple way to read and write files. A file is opened with a "
    "name and a mode, and the object that is returned can be used to read its contents "
    "as a string or to write new text to it. When the file does not exist and the mode "
    "is for reading, an error is raised; when the mode is for writing, a new empty file "
    "is created. The file should be closed when it is no longer needed, and the best "
    "way to make sure of this is to use the object in a with statement, which closes it "
    "even if an exception occurs inside the block. "
    "A list is an ordered collection of items. Items can be added to the end of the list, "
    "inserted at a given position, or removed by value or by index. The sort method "
    "arranges the items in ascending order; a key function can be supplied to customize "
    "the order, and the reverse flag can be set to request the result in descending "
    "order. The sort is stable, which means that items that compare equal keep their "
    "original order. If the list is modified while it is being sorted, the result is "
    "undefined and an error may be raised. "
    "Return the number of seconds since the epoch as a floating point number. The exact "
    "date of the epoch and the handling of leap seconds depend on the platform. Note "
    "that even though the time is always returned as a floating point number, not all "
    "systems provide time with a better precision than one second. The value returned "
    "by this function may decrease between two calls if the system clock has been set "
    "back. Use a monotonic clock to measure the time that passes between two events. "
    "The default value of the timeout argument is None, which means that the call waits "
    "until the operation is complete. If a timeout is given and the operation does not "
    "complete in time, the call returns without a result and the caller may try again "
    "later. Each object in this class keeps a reference to the connection that created "
    "it, so the connection stays open for as long as any of its objects are in use."
)

#: Prompts timed when a request brings none (8, one batch of 8).
DEFAULT_PROMPTS = (
    "The history of the town begins",
    "To read a file in Python, you",
    "The weather this morning was",
    "A good teacher always",
    "Return the number of items in",
    "The boat left the harbour and",
    "This function raises an error when",
    "In the evening the people of the town",
)
