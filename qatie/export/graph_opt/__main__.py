"""`python -m qatie.export.graph_opt IN.onnx [OUT.onnx]`."""
from qatie.export.graph_opt import main

raise SystemExit(main())
