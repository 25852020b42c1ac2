"""A module whose import starts a thread (as ONNX Runtime's import starts a native
one): a fork server must refuse to preload it."""

import threading
import time

threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
