"""Weights files and where they come from: safetensors load, save and checks (``files``), the hub client
(``hub``, the only module that imports huggingface_hub), the table of known weights as data (``table``), the resolve
order with its sha256 checks (``resolve``) and the maintainers' table generator (``publish``). May import
:mod:`drcn_cli.io`, :mod:`drcn_cli.model` and :mod:`drcn_cli.errors`; torch only inside the functions that handle
tensors, so that finding files stays instant.
"""
