import os
import threading
from pathlib import Path

import pytest

from drcn_cli.errors import UsageError
from drcn_cli.io.batch import Job, OutputPlan, distributed_rank, plan_jobs, run_pipelined, scale_label, shard
from drcn_cli.io.inputs import Source, expand_inputs


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "in"
    for rel in ("a.png", "b.JPG", "sub/c.webp", "sub/deeper/d.tif", ".hidden.png", ".e.png.1a2b.tmp", "notes.txt"):
        touch(root / rel)
    return root


def names(sources, root):
    return [str(s.path.relative_to(root)) for s in sources]


# ------------------------------------------------------------------------------------------ inputs


def test_folder_takes_images_only_top_level_unless_recursive(tree):
    sources, problems = expand_inputs([str(tree)])
    assert names(sources, tree) == ["a.png", "b.JPG"] and problems == []
    sources, _ = expand_inputs([str(tree)], recursive=True)
    assert names(sources, tree) == ["a.png", "b.JPG", "sub/c.webp", "sub/deeper/d.tif"]
    assert all(s.root == tree for s in sources)


def test_files_globs_stdin_and_duplicates(tree):
    sources, problems = expand_inputs([str(tree / "a.png"), str(tree / "*.png"), "-", str(tree / "notes.txt")])
    assert [s.label for s in sources] == [str(tree / "a.png"), "-", str(tree / "notes.txt")]
    assert sources[0].root is None  # a named file is not mirrored
    assert problems == []
    _, problems = expand_inputs(["-", "-"])
    assert [p.reason for p in problems] == ["stdin can be read only once"]


def test_problems_for_missing_paths_empty_folders_and_dead_globs(tmp_path, tree):
    (tmp_path / "empty").mkdir()
    nested_only = tmp_path / "nested"
    touch(nested_only / "sub" / "x.png")
    sources, problems = expand_inputs(
        [str(tmp_path / "missing.png"), str(tmp_path / "empty"), str(nested_only), str(tmp_path / "*.gif")]
    )
    assert sources == []
    reasons = {Path(p.input).name: p.reason for p in problems}
    assert reasons == {
        "missing.png": "no such file or folder",
        "empty": "folder with no images",
        "nested": "folder with no images (its subfolders have some: add --recursive)",
        "*.gif": "no image matches this pattern",
    }


# ------------------------------------------------------------------------------------------ outputs


def test_single_file_to_a_named_output(tree, tmp_path):
    sources, _ = expand_inputs([str(tree / "a.png")])
    (job,) = plan_jobs(sources, OutputPlan(output=str(tmp_path / "out.webp")))
    assert job.output == tmp_path / "out.webp" and job.fmt == "WEBP" and job.error is None


def test_outputs_beside_the_inputs_get_a_suffix(tree):
    sources, _ = expand_inputs([str(tree / "a.png"), str(tree / "b.JPG")])
    jobs = plan_jobs(sources, OutputPlan(scale_label=scale_label(3, None, None)))
    assert [j.output.name for j in jobs] == ["a_x3.png", "b_x3.JPG"]
    assert [j.fmt for j in jobs] == ["PNG", "JPEG"]
    jobs = plan_jobs(sources, OutputPlan(suffix="-big", fmt="webp"))
    assert [j.output.name for j in jobs] == ["a-big.webp", "b-big.webp"]


def test_recursive_tree_is_mirrored_under_the_output_folder(tree, tmp_path):
    sources, _ = expand_inputs([str(tree)], recursive=True)
    out = tmp_path / "out"
    jobs = plan_jobs(sources, OutputPlan(output=str(out), fmt="png"))
    assert [str(j.output.relative_to(out)) for j in jobs] == ["a.png", "b.png", "sub/c.png", "sub/deeper/d.png"]


def test_a_folder_needs_an_output_folder(tree):
    sources, _ = expand_inputs([str(tree)])
    with pytest.raises(UsageError, match="needs an output folder"):
        plan_jobs(sources, OutputPlan())


def test_output_folder_inside_the_input_tree_is_not_read_again(tree):
    touch(tree / "up" / "a.png")  # a previous run's result
    sources, _ = expand_inputs([str(tree)], recursive=True)
    jobs = plan_jobs(sources, OutputPlan(output=str(tree / "up"), skip_existing=True))
    assert [str(j.source.path.relative_to(tree)) for j in jobs] == ["a.png", "b.JPG", "sub/c.webp", "sub/deeper/d.tif"]
    assert [j.skip for j in jobs] == [True, False, False, False]


def test_an_input_is_never_an_output(tree):
    sources, _ = expand_inputs([str(tree / "a.png")])
    (job,) = plan_jobs(sources, OutputPlan(output=str(tree / "a.png"), overwrite=True))
    assert "is an input file" in job.error
    sources, _ = expand_inputs([str(tree)])
    jobs = plan_jobs(sources, OutputPlan(output=str(tree), suffix="", overwrite=True))
    assert all("is an input file" in j.error for j in jobs)


def test_a_hard_link_to_the_input_is_recognised(tree):
    os.link(tree / "a.png", tree / "link.png")
    sources, _ = expand_inputs([str(tree / "a.png")])
    (job,) = plan_jobs(sources, OutputPlan(output=str(tree / "link.png"), overwrite=True))
    assert "is an input file" in job.error


def test_same_folder_output_gets_the_default_suffix(tree):
    sources, _ = expand_inputs([str(tree)])
    jobs = plan_jobs(sources, OutputPlan(output=str(tree), scale_label="x2"))
    assert [j.output.name for j in jobs] == ["a_x2.png", "b_x2.JPG"] and all(j.error is None for j in jobs)


def test_existing_outputs_refused_skipped_or_overwritten(tree, tmp_path):
    out = tmp_path / "out"
    touch(out / "a.png")
    sources, _ = expand_inputs([str(tree)])
    refused, fresh = plan_jobs(sources, OutputPlan(output=str(out)))
    assert "exists (use --overwrite or --skip-existing)" in refused.error and fresh.error is None
    skipped, _ = plan_jobs(sources, OutputPlan(output=str(out), skip_existing=True))
    assert skipped.skip and skipped.error is None
    replaced, _ = plan_jobs(sources, OutputPlan(output=str(out), overwrite=True))
    assert not replaced.skip and replaced.error is None
    with pytest.raises(UsageError, match="contradict"):
        plan_jobs(sources, OutputPlan(output=str(out), overwrite=True, skip_existing=True))


def test_two_inputs_with_one_output_name(tmp_path):
    first, second = touch(tmp_path / "x" / "p.png"), touch(tmp_path / "y" / "p.png")
    sources, _ = expand_inputs([str(first), str(second)])
    jobs = plan_jobs(sources, OutputPlan(output=str(tmp_path / "out")))
    assert jobs[0].error is None and f"also the output of {first}" in jobs[1].error


def test_stdout_and_stdin_rules(tree, tmp_path):
    (job,) = plan_jobs([Source(None)], OutputPlan())
    assert job.output is None and job.fmt == "PNG" and job.output_label == "-"
    (job,) = plan_jobs([Source(None)], OutputPlan(output=str(tmp_path / "o.jpg")))
    assert job.output == tmp_path / "o.jpg" and job.fmt == "JPEG"
    sources, _ = expand_inputs([str(tree / "a.png"), str(tree / "b.JPG")])
    with pytest.raises(UsageError, match="only one input"):
        plan_jobs(sources, OutputPlan(output="-"))
    with pytest.raises(UsageError, match="cannot tell the format"):
        plan_jobs(sources[:1], OutputPlan(output=str(tmp_path / "out.bmp")))
    with pytest.raises(UsageError, match="does not match --format"):
        plan_jobs(sources[:1], OutputPlan(output=str(tmp_path / "out.png"), fmt="jpeg"))


def test_a_new_name_without_extension_is_a_folder_for_one_input(tree, tmp_path):
    sources, _ = expand_inputs([str(tree / "a.png")])
    (job,) = plan_jobs(sources, OutputPlan(output=str(tmp_path / "outdir")))
    assert job.output == tmp_path / "outdir" / "a.png" and job.fmt == "PNG" and job.error is None
    # An existing file without an extension stays a file (and needs --format); stdin always needs a file name.
    touch(tmp_path / "plain")
    with pytest.raises(UsageError, match="cannot tell the format"):
        plan_jobs(sources, OutputPlan(output=str(tmp_path / "plain")))
    with pytest.raises(UsageError, match="cannot tell the format"):
        plan_jobs([Source(None)], OutputPlan(output=str(tmp_path / "newname")))


# ------------------------------------------------------------------------------------------ ranks


def test_shards_cover_every_job_once():
    jobs = [Job(Source(Path(f"{i}.png")), Path(f"o{i}.png"), "PNG") for i in range(10)]
    shards = [shard(jobs, rank, 3) for rank in range(3)]
    assert sorted(j.output.name for s in shards for j in s) == sorted(j.output.name for j in jobs)
    assert [len(s) for s in shards] == [4, 3, 3]
    with pytest.raises(ValueError):
        shard(jobs, 3, 3)


def test_rank_from_torchrun_environment():
    assert distributed_rank({}) == (0, 1)
    assert distributed_rank({"RANK": "2", "WORLD_SIZE": "4"}) == (2, 4)
    for bad in ({"RANK": "4", "WORLD_SIZE": "4"}, {"RANK": "x", "WORLD_SIZE": "2"}):
        with pytest.raises(ValueError):
            distributed_rank(bad)


# ------------------------------------------------------------------------------------------ running


def make_jobs(n):
    return [Job(Source(Path(f"{i}.png")), Path(f"o{i}.png"), "PNG") for i in range(n)]


def test_pipeline_carries_each_error_with_its_stage():
    threads = set()

    def load(job):
        threads.add(threading.current_thread().name)
        if job.source.path.name == "1.png":
            raise ValueError("bad read")
        return job.source.path.stem

    def process(job, loaded):
        if loaded == "2":
            raise RuntimeError("bad upscale")
        return loaded * 2

    def save(job, processed):
        threads.add(threading.current_thread().name)
        if processed == "33":
            raise OSError("bad write")
        return processed

    outcomes = {o.job.source.path.name: o for o in run_pipelined(make_jobs(5), load, process, save)}
    assert sorted(outcomes) == ["0.png", "1.png", "2.png", "3.png", "4.png"]
    assert outcomes["0.png"].ok and outcomes["0.png"].saved == "00" and outcomes["4.png"].saved == "44"
    assert {name: (o.stage, str(o.error)) for name, o in outcomes.items() if not o.ok} == {
        "1.png": ("read", "bad read"),
        "2.png": ("upscale", "bad upscale"),
        "3.png": ("write", "bad write"),
    }
    assert set(outcomes["0.png"].timings) == {"read", "upscale", "write"}
    assert threading.current_thread().name not in threads  # reads and writes ran in the background


def test_reads_run_ahead_of_the_upscale():
    started = []
    gate = threading.Event()

    def load(job):
        started.append(job.source.path.name)
        if len(started) >= 3:
            gate.set()
        return job

    def process(job, loaded):
        # The first image is processed only once two more are being read: reading overlaps the device's work.
        assert gate.wait(5), "reads did not run ahead"
        return job

    results = list(run_pipelined(make_jobs(4), load, process, lambda job, p: None, read_ahead=3))
    assert all(o.ok for o in results) and len(results) == 4


def test_interrupt_propagates_and_cancels_waiting_reads():
    loaded = []

    def load(job):
        loaded.append(job)
        return job

    def process(job, data):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        list(run_pipelined(make_jobs(50), load, process, lambda job, p: None, read_ahead=2))
    assert len(loaded) <= 4


@pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt", reason="needs symbolic links")
def test_a_recursive_glob_over_looping_symlinks_ends(tmp_path):
    import signal

    root = tmp_path / "tree"
    touch(root / "a.png")
    touch(root / "sub" / "b.png")
    os.symlink("..", root / "up1")  # two links to the parent: glob.glob's ** walks 2^depth paths
    os.symlink("..", root / "up2")
    os.symlink(".", root / "sub" / "self")

    def too_long(signum, frame):
        raise TimeoutError("the glob did not end")

    previous = signal.signal(signal.SIGALRM, too_long)
    signal.setitimer(signal.ITIMER_REAL, 10)
    try:
        sources, problems = expand_inputs([f"{root}/**/*.png"], recursive=True)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert problems == []
    assert sorted(s.path.resolve() for s in sources) == sorted([(root / "a.png").resolve(),
                                                                (root / "sub" / "b.png").resolve()])


@pytest.mark.parametrize("pattern", ["in/**/*.png", "in/**", "in/**/", "in/*/**/*.tif", "**/*.webp", "i*/**/d.*"])
def test_recursive_globs_match_as_glob_does(tree, monkeypatch, pattern):
    import glob

    from drcn_cli.io.inputs import _glob

    monkeypatch.chdir(tree.parent)
    assert sorted(_glob(pattern, True)) == sorted(glob.glob(pattern, recursive=True))


def test_a_glob_across_folders_mirrors_the_tree_below_its_fixed_part(tmp_path, monkeypatch):
    root = tmp_path / "shots"
    for rel in ("a/x.png", "b/x.png", "b/c/x.png", "top.png"):
        touch(root / rel)
    out = tmp_path / "out"
    sources, problems = expand_inputs([f"{root}/**/*.png"], recursive=True)
    assert problems == [] and all(s.base == root for s in sources)
    jobs = plan_jobs(sources, OutputPlan(output=str(out)))
    assert sorted(str(j.output.relative_to(out)) for j in jobs) == ["a/x.png", "b/c/x.png", "b/x.png", "top.png"]
    assert all(j.error is None for j in jobs)  # no longer "also the output of" each other

    # a wildcard in the middle, relative to the current folder; and beside the inputs nothing changes
    monkeypatch.chdir(tmp_path)
    sources, _ = expand_inputs(["shots/*/x.png"])
    jobs = plan_jobs(sources, OutputPlan(output="out2"))
    assert sorted(str(j.output) for j in jobs) == ["out2/a/x.png", "out2/b/x.png"]
    beside = plan_jobs(sources, OutputPlan(scale_label="x2"))
    assert sorted(str(j.output) for j in beside) == ["shots/a/x_x2.png", "shots/b/x_x2.png"]


# ------------------------------------------------------------------------------------------ hostile names


def test_names_the_file_system_cannot_hold_are_one_problem_each(tmp_path):
    long_input = touch(tmp_path / ("a" * 251 + ".png"))  # 255 bytes: exists; its output name would not fit
    missing = tmp_path / ("m" * 300 + ".png")
    accents = tmp_path / ("é" * 126 + ".png")  # 130 characters, 256 bytes
    deep = tmp_path / "/".join(["d" * 200] * 25) / "x.png"  # every name fits, the path (over 4096 bytes) does not
    sources, problems = expand_inputs([str(long_input), str(missing), str(accents), str(deep)])
    assert [s.path for s in sources] == [long_input]
    reasons = {p.input: p.reason for p in problems}
    assert reasons[str(missing)].startswith("no such file or folder (name too long for the file system: 'mmmm")
    assert "(304 bytes), where the most is 255 bytes" in reasons[str(missing)]
    assert "(256 bytes)" in reasons[str(accents)]
    assert reasons[str(deep)].startswith("no such file or folder (path too long for the system")

    (job,) = plan_jobs(sources, OutputPlan(scale_label="x2_bicubic"))  # beside: a_..._x2_bicubic.png, 266 bytes
    assert job.error.startswith("cannot write the output: name too long for the file system: 'aaaa")
    assert "(266 bytes), where the most is 255 bytes (give a shorter -o or --suffix)" in job.error
    (job,) = plan_jobs(sources, OutputPlan(output=str(tmp_path / "out") + "/"))  # same name in a folder: fits
    assert job.error is None and job.output == tmp_path / "out" / long_input.name
    (job,) = plan_jobs(sources, OutputPlan(output=str(tmp_path / "new" / "deeper") + "/", suffix="_big"))
    assert job.error.startswith("cannot write the output: name too long")  # its folders do not exist yet
    assert not (tmp_path / "new").exists()
    good, _ = expand_inputs([str(touch(tmp_path / "good.png"))])
    (job,) = plan_jobs(good, OutputPlan(output=str(tmp_path / ("o" * 252 + ".png"))))  # -o of 256 bytes
    assert job.error.startswith("cannot write the output: name too long") and "(256 bytes)" in job.error
    (job,) = plan_jobs(good, OutputPlan(output=str(tmp_path / ("f" * 256)), suffix="_x2"))  # as a folder
    assert job.error.startswith("cannot write the output: name too long") and "'ffff" in job.error


def test_empty_and_nul_names_name_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    touch(tmp_path / "a.png")
    sources, problems = expand_inputs(["", "a\0b.png", "a.png"])  # "" is not "." (the current folder)
    assert [s.path for s in sources] == [Path("a.png")]
    assert [p.reason for p in problems] == ["no such file or folder (an empty name)",
                                            "no such file or folder (the name holds a NUL byte, which no file name "
                                            "can)"]  # fmt: skip
    for output in ("", "out\0.png"):
        with pytest.raises(UsageError, match="-o names nothing"):
            plan_jobs(sources, OutputPlan(output=output))


def test_links_that_loop_are_no_traceback(tmp_path):
    (tmp_path / "loop.png").symlink_to("loop.png")
    image = touch(tmp_path / "in" / "a.png")
    sources, problems = expand_inputs([str(tmp_path / "loop.png"), str(image)])
    assert problems == [] and len(sources) == 2  # a named file is tried; reading it fails in one line
    jobs = plan_jobs(sources[1:], OutputPlan(output=str(tmp_path / "loop.png")))
    assert jobs[0].error == (f"{tmp_path / 'loop.png'} is a symbolic link (to loop.png, a loop of links that leads "
                             "nowhere): drcn replaces only regular files")  # fmt: skip


def test_a_link_that_leads_nowhere_as_the_output_is_refused_while_planning(tmp_path):
    image = touch(tmp_path / "a.png")
    link = tmp_path / "out.png"
    link.symlink_to(tmp_path / "nowhere" / "x.png")
    sources, _ = expand_inputs([str(image)])
    for plan in (OutputPlan(output=str(link)), OutputPlan(output=str(link), overwrite=True),
                 OutputPlan(output=str(link), skip_existing=True)):  # fmt: skip
        (job,) = plan_jobs(sources, plan)
        assert job.error == (f"{link} is a symbolic link (to {tmp_path / 'nowhere' / 'x.png'}, which does not "
                             "exist): drcn replaces only regular files")  # fmt: skip
    assert link.is_symlink() and not (tmp_path / "nowhere").exists()


def test_outputs_of_drcn_in_the_folder_written_into_are_not_inputs(tmp_path):
    import numpy as np

    from drcn_cli.io.write import encode_image

    folder = tmp_path / "same"
    pixels = np.zeros((4, 5, 3), np.uint8)
    ours = {"a_x2.png": "PNG", "b_x2.jpg": "JPEG", "c_x3.webp": "WEBP", "d.tif": "TIFF"}  # any name: the mark counts
    for name, fmt in ours.items():
        touch(folder / name, encode_image(pixels, fmt))
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    for name in ("a.png", "photo_x2.png"):  # the user's images, whatever their names say
        touch(folder / name, buffer.getvalue())
    touch(folder / "sub" / "e_x2.png", encode_image(pixels, "PNG"))

    def inputs(typed, **plan):
        sources, _ = expand_inputs(typed, recursive=True)
        return sorted(str(j.source.path.relative_to(folder)) for j in plan_jobs(sources, OutputPlan(**plan)))

    users = ["a.png", "photo_x2.png"]
    assert inputs([str(folder)], output=str(folder)) == users  # written into itself
    assert inputs([f"{folder}/*"], output=str(folder)) == users  # a glob
    assert inputs([f"{folder}/*.*"]) == users  # a glob, beside the inputs
    assert inputs([str(folder)], output=str(folder), suffix="_big", fmt="tiff") == users  # other options
    every = sorted([*ours, *users, "sub/e_x2.png"])
    assert inputs([str(folder)], output=str(tmp_path / "elsewhere")) == every  # results upscaled again elsewhere
    assert inputs([str(folder / "a_x2.png")], output=str(folder)) == ["a_x2.png"]  # named: the user asks for it
