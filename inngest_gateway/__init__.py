"""inngest-gateway: a Flask extension that turns browser posts into Inngest events.

```python
from inngest_gateway import InngestGateway

gateway = InngestGateway(app)  # or InngestGateway(), then gateway.init_app(app)
```
"""

from .extension import InngestGateway
from .poster import default_user_serializer
from .sends import CURRENT_USER, outbox_table
from .settings import ConfigError, Settings, load_settings
from .version import __version__

__all__ = [
    "CURRENT_USER",
    "ConfigError",
    "InngestGateway",
    "Settings",
    "__version__",
    "default_user_serializer",
    "load_settings",
    "outbox_table",
]
