"""Running the network on images: the one upscaler (``pipeline``), models opened ready to run (``loader``), tiles
(``tiling``), device, precision and threads (``device``), MATLAB's bicubic (``resize``), colour and arrays <->
tensors (``color``), and ONNX export (``export``). May import :mod:`drcn_cli.io`, :mod:`drcn_cli.weights`,
:mod:`drcn_cli.model` and :mod:`drcn_cli.errors`; never bench, training or the CLI.
"""
