"""Files in and out, as numpy arrays: image files (what drcn reads and writes, reading, encoding and the
hand-written PNG and TIFF parts), video files, the one atomic writer of every file drcn writes, and batch planning
(inputs -> jobs -> outputs, run with read-ahead and write-behind). May import only :mod:`drcn_cli.errors` and
:mod:`drcn_cli.processes` (and the package's version); never another floor, never torch.
"""
