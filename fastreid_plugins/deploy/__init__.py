"""Deployment: exporting a trained model to an inference engine (ONNX today) and checking that it
gives the same answers as the PyTorch model (:mod:`.onnx`)."""

#: the ONNX check's tolerance, ``|onnx - torch| <= atol + rtol * |torch|`` elementwise (float32;
#: the observed differences are ~1e-6); the command line's ``--atol`` / ``--rtol`` defaults
DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3
