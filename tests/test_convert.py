"""`python -m bigvar.convert var`: official files → weight directory → sampling, and the errors
for files that are not what the user thinks they are."""
import json
import os

import numpy as np
import pytest

from bigvar import config_lib, weights
from bigvar.models.var import PATCH_NUMS_256, PATCH_NUMS_512
from bigvar.convert import __main__ as convert_cli
from bigvar.convert import torch_pickle
from bigvar.convert import var as convert_var
from bigvar.convert.common import ConversionError, flatten

from conftest import FIXTURES

VAR_FIXTURES = os.path.join(FIXTURES, "var")
VAE_PTH = os.path.join(VAR_FIXTURES, "vqvae_tiny.pth")
VAR_PTH = os.path.join(VAR_FIXTURES, "var_d2_256.pth")


@pytest.fixture(scope="module")
def state_dicts():
    return torch_pickle.load(VAR_PTH), torch_pickle.load(VAE_PTH)


@pytest.mark.slow
def test_cli_converts_and_main_samples_from_it(tmp_path):
    out = tmp_path / "ckpt"
    assert convert_cli.main(["var", f"--vae={VAE_PTH}", f"--var={VAR_PTH}", f"--out={out}"]) == 0
    stored = json.loads((out / "config.json").read_text())
    assert stored["var"]["depth"] == 2 and stored["var"]["num_classes"] == 1000
    assert tuple(stored["var"]["patch_nums"]) == PATCH_NUMS_256
    assert stored["vae"]["ch"] == 32 and stored["vae"]["vocab_size"] == 256
    assert not [p for p in os.listdir(tmp_path) if "partial" in p]

    # Sampling with --config.init_from=DIR: the config must describe the same model.
    from bigvar import main
    config = config_lib.load_config_file("var.py", "d16")
    for section in ("var", "vae"):
        config[section].update({k: stored[section][k] for k in weights.ARCH_FIELDS[section]})
    config.var.patch_nums = tuple(config.var.patch_nums)
    config.vae.ch_mult = tuple(config.vae.ch_mult)
    config.init_from = str(out)
    config.sample.update(classes=(1, 999), images_per_class=1, batch_size=2, top_k=20, top_p=0.9)
    summary = main.run(config, str(tmp_path / "work"))
    with np.load(summary["npz"]) as npz:
        assert npz["arr_0"].shape == (2, 256, 256, 3) and npz["arr_0"].dtype == np.uint8
        np.testing.assert_array_equal(npz["labels"], [1, 999])

    # The same weights under a config of another depth: a clear error naming the fields.
    config.var.depth = 16
    with pytest.raises(ValueError, match=r"var.depth: config has 16, checkpoint has 2"):
        main.run(config, str(tmp_path / "work2"))


def test_training_checkpoint_gives_the_same_params(state_dicts):
    _, bare = convert_var.convert(VAE_PTH, VAR_PTH)
    _, nested = convert_var.convert(VAE_PTH, os.path.join(VAR_FIXTURES, "var_d2_256_trainer_ckpt.pth"))
    a, b = flatten(bare["var"]), flatten(nested["var"])
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_detects_every_variant():
    cases = {"d2_256": (2, 128, 2, False, True, 1000, PATCH_NUMS_256),
             "d3_512_saln": (3, 192, 3, True, True, 10, PATCH_NUMS_512),
             "d2_256_nol2": (2, 128, 2, False, False, 10, PATCH_NUMS_256)}
    for name, want in cases.items():
        sd = torch_pickle.load(os.path.join(VAR_FIXTURES, f"var_{name}.pth"))
        arch = convert_var.detect_var(sd, name)
        got = (arch["depth"], arch["embed_dim"], arch["num_heads"], arch["shared_aln"],
               arch["attn_l2_norm"], arch["num_classes"], arch["patch_nums"])
        assert got == want, name


def test_bigr_checkpoint_is_named(state_dicts):
    _, vae_sd = state_dicts
    bigr_like = {"layers.0.attention.wqkv.weight": np.zeros((6, 2), np.float32),
                 "tok_embeddings.weight": np.zeros((4, 2), np.float32)}
    with pytest.raises(ConversionError, match="BiGR checkpoint"):
        convert_var.convert_state_dicts(bigr_like, vae_sd)
    var_sd, _ = state_dicts
    with pytest.raises(ConversionError, match="pass it as --vae"):
        convert_var.convert_state_dicts(vae_sd, vae_sd)
    with pytest.raises(ConversionError, match="pass it as --var"):
        convert_var.convert_state_dicts(var_sd, var_sd)


def test_missing_unexpected_and_misshaped_keys_are_listed(state_dicts):
    var_sd, vae_sd = state_dicts
    broken = dict(var_sd)
    broken["blocks.1.ffn.fc1.weight"] = np.zeros((100, 128), np.float32)
    del broken["head_nm.ada_lin.1.bias"]
    with pytest.raises(ConversionError, match=r"mis-shaped: \['blocks.1.ffn.fc1.weight: \(100, 128\)'\]"):
        convert_var.convert_state_dicts(broken, vae_sd)
    broken["blocks.1.ffn.fc1.weight"] = var_sd["blocks.1.ffn.fc1.weight"]
    with pytest.raises(ConversionError, match=r"1 missing:\n    head_nm.ada_lin.1.bias"):
        convert_var.convert_state_dicts(broken, vae_sd)

    misshaped = dict(var_sd)
    misshaped["head.weight"] = np.zeros((256, 64), np.float32)
    with pytest.raises(ConversionError, match=r"mis-shaped:\n    head.weight: expected \(128, 256\), found \(64, 256\)"):
        convert_var.convert_state_dicts(misshaped, vae_sd)

    extra = dict(var_sd)
    extra["blocks.0.attn.rel_pos_bias"] = np.zeros((3,), np.float32)
    with pytest.raises(ConversionError, match=r"1 unexpected:\n    blocks.0.attn.rel_pos_bias"):
        convert_var.convert_state_dicts(extra, vae_sd)

    vae_broken = dict(vae_sd)
    vae_broken["decoder.conv_out.weight"] = np.zeros((3, 64, 3, 3), np.float32)
    with pytest.raises(ConversionError, match=r"decoder.conv_out.weight: expected"):
        convert_var.convert_state_dicts(var_sd, vae_broken)


def test_config_mismatch_is_named(state_dicts):
    var_sd, vae_sd = state_dicts
    tiny = config_lib.load_config_file("var.py", "d16")  # a d16 config for a d2 file
    with pytest.raises(ValueError, match=r"var.depth: config has 16, checkpoint has 2"):
        convert_var.convert_state_dicts(var_sd, vae_sd, expected_config=tiny)


def test_cli_failures_leave_nothing_behind(tmp_path, capsys):
    truncated = tmp_path / "var_truncated.pth"
    data = open(VAR_PTH, "rb").read()
    truncated.write_bytes(data[: len(data) // 2])
    out = tmp_path / "ckpt"
    assert convert_cli.main(["var", f"--vae={VAE_PTH}", f"--var={truncated}", f"--out={out}"]) == 2
    assert "var_truncated.pth" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["var_truncated.pth"]

    # A d3 file checked against the tiny d2 config file: error names the differing fields.
    assert convert_cli.main(["var", f"--vae={VAE_PTH}", f"--var={os.path.join(VAR_FIXTURES, 'var_d3_512_saln.pth')}",
                             f"--out={out}", "--config=configs/var_tiny.py"]) == 2
    err = capsys.readouterr().err
    assert "var.depth: config has 2, checkpoint has 3" in err
    assert not out.exists()

    # An existing non-empty output directory is not overwritten without --overwrite.
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert convert_cli.main(["var", f"--vae={VAE_PTH}", f"--var={VAR_PTH}", f"--out={out}"]) == 2
    assert os.listdir(out) == ["keep.txt"]


def test_a_killed_conversions_partial_folder_is_removed_by_the_next(tmp_path, capsys):
    """A conversion killed while writing leaves `.<out>.partial-<host>-<pid>-<random>` next to
    `--out`; the next conversion to that folder removes it when its writer is gone, and leaves
    the one of a writer still running."""
    import socket
    import subprocess
    import sys
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    abandoned = tmp_path / f".ckpt.partial-{socket.gethostname()}-{gone}-k1ll3d"
    running = tmp_path / f".ckpt.partial-{socket.gethostname()}-{os.getpid()}-wr1t1ng"
    for folder in (abandoned, running):
        (folder / "params").mkdir(parents=True)
    out = tmp_path / "ckpt"
    assert convert_cli.main(["var", f"--vae={VAE_PTH}", f"--var={VAR_PTH}", f"--out={out}"]) == 0
    assert sorted(os.listdir(tmp_path)) == [running.name, "ckpt"]


def test_overwrite_replaces_only_weights_bigvar_wrote(tmp_path, capsys):
    """`--overwrite` into the folder of the checkpoints being converted (or a parent of it, or
    one with the user's files) is refused and deletes nothing; bigvar's own output is replaced."""
    import shutil
    import stat
    folder = tmp_path / "downloads"
    folder.mkdir()
    vae, var = shutil.copy(VAE_PTH, folder / "vqvae.pth"), shutil.copy(VAR_PTH, folder / "var.pth")
    (folder / "notes.txt").write_text("mine")
    before = sorted(os.listdir(folder))
    for out in (folder, tmp_path):
        assert convert_cli.main(["var", f"--vae={vae}", f"--var={var}", f"--out={out}",
                                 "--overwrite"]) == 2
        assert "not a weights folder bigvar wrote" in capsys.readouterr().err
        assert sorted(os.listdir(folder)) == before and sorted(os.listdir(tmp_path)) == ["downloads"]

    ckpt = tmp_path / "ckpt"
    args = ["var", f"--vae={vae}", f"--var={var}", f"--out={ckpt}"]
    assert convert_cli.main(args) == 0
    assert convert_cli.main(args + ["--overwrite"]) == 0  # its own output: replaced
    assert sorted(os.listdir(ckpt)) == ["checksums.json", "config.json", "params"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(ckpt).st_mode) == 0o777 & ~umask  # as mkdir makes it, not 0700
    (ckpt / "notes.txt").write_text("mine")  # … until the user keeps something there
    assert convert_cli.main(args + ["--overwrite"]) == 2
    assert "notes.txt" in capsys.readouterr().err and (ckpt / "notes.txt").exists()


def test_crafted_pickle_is_refused_by_the_converter(tmp_path):
    import pickle
    import zipfile

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path}/pwned",))

    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps(Evil(), protocol=2))
        z.writestr("evil/version", "3\n")
    assert convert_cli.main(["var", f"--vae={VAE_PTH}", f"--var={path}", f"--out={tmp_path / 'o'}"]) == 2
    assert not (tmp_path / "pwned").exists()


def test_damaged_weights_are_refused_on_load(tmp_path):
    """Bytes flipped in a converted folder's array files loaded without a word (the eval job then
    reported an Inception Score of 1.0); every array's checksum is now written at conversion and
    verified on every load."""
    import glob

    from bigvar import weights
    out = tmp_path / "ckpt"
    assert convert_cli.main(["var", f"--vae={VAE_PTH}", f"--var={VAR_PTH}", f"--out={out}"]) == 0
    intact = weights.load_weights(str(out))
    data = max(glob.glob(str(out / "params" / "**" / "d" / "*"), recursive=True), key=os.path.getsize)
    blob = bytearray(open(data, "rb").read())
    middle = len(blob) // 2
    blob[middle:middle + 16] = bytes(b ^ 0xFF for b in blob[middle:middle + 16])
    open(data, "wb").write(bytes(blob))
    with pytest.raises(weights.DamagedWeights, match=r"arrays fail their checksums .*Convert the "
                                                     r"official checkpoint again"):
        weights.load_weights(str(out))
    assert intact  # (loaded before the damage)
