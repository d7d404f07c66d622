"""`python -m qatie.graph_opt IN.onnx [OUT.onnx]`."""
from . import main

raise SystemExit(main())
