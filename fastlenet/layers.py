"""The fast layers' first module name: `fastlenet.layers` is `fastlenet.fast`."""

import sys

from . import fast

sys.modules[__name__] = fast
