"""Measuring quality as the paper does: the one degradation (``degradation``), the evaluation protocol
(``protocol``), PSNR and SSIM (``metrics``), the published numbers (``published``), the benchmark datasets
(``datasets``, with the one reader of benchmark and training images) and `drcn bench`'s runner and its results
(``runner``, ``results``). May import :mod:`drcn_cli.inference` and what it may; never training or the CLI.
"""
