"""The ``kvision`` sub-commands, one module each, the shape of
:mod:`kvision.export.command`: ``add_parser(subparsers)`` adds the command's parser
(``func=run``) and ``run(args)`` does what the parsed arguments ask and returns the
exit status. :mod:`kvision.cli` adds them in the order of :data:`COMMANDS` and owns
what every command shares: ``--verbose``, the quiet start-up and the error handling.

Each module imports the library inside ``run``, so ``kvision --help`` stays fast.
The list command's module is ``list_``: a submodule named ``list`` would replace the
builtin ``list`` inside this package.
"""

from kvision.commands import (embed, evaluate, explain, info, list_, predict, search, sort,
                              train)

# The export command stays with the export code it drives (its module also holds the
# library's ``export()``); it is one command like the others.
from kvision.export import command as export

# In the order ``kvision --help`` lists them.
COMMANDS = (list_, info, train, evaluate, predict, explain, sort, embed, search, export)

__all__ = ["COMMANDS"]
