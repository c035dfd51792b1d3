"""Datasets: pairing and its errors, crops and flips, synthetic pairs, the task mix, the held-out split."""
import pytest
import torch

from trajir.data import PairedFolders, SyntheticPairs, TaskMix, split_holdout, write_png


def _image(seed, h=40, w=48):
    return torch.randint(0, 256, (3, h, w), generator=torch.Generator().manual_seed(seed)).float() / 255


def _pairs(root, names, lq_names=None, h=40, w=48):
    """GT images and their exact negatives as LQ, so a shared crop shows as lq == 1 - gt."""
    for i, n in enumerate(names):
        write_png(root / "gt" / f"{n}.png", _image(i, h, w))
    for i, n in enumerate(lq_names or names):
        write_png(root / "lq" / f"{n}.png", 1 - _image(i, h, w))
    return root


def test_paired_sample_shares_crop_and_flips(tmp_path):
    data = PairedFolders(_pairs(tmp_path, ["a", "b", "c"]), crop=(16, 24), hflip=True, vflip=True, task="sr")
    assert len(data) == 3 and data.names == ["a", "b", "c"]
    seen = set()
    for epoch in range(6):
        s = data.sample(1, epoch)
        assert s["lq"].shape == s["gt"].shape == (3, 16, 24) and (s["task"], s["name"]) == ("sr", "b")
        torch.testing.assert_close(s["lq"], 1 - s["gt"], atol=1e-6, rtol=0)
        seen.add(tuple(s["gt"].flatten()[:4].tolist()))
        torch.testing.assert_close(data.sample(1, epoch)["gt"], s["gt"], atol=0, rtol=0)
    assert len(seen) > 1  # different epochs, different crops


def test_flips_and_crops_come_from_the_image(tmp_path):
    data = PairedFolders(_pairs(tmp_path, ["a"]), crop=16, hflip=True, vflip=True)
    full = _image(0)
    variants = [full, full.flip(-1), full.flip(-2), full.flip(-1, -2)]
    found = set()
    for epoch in range(12):
        gt = data.sample(0, epoch)["gt"]
        hits = [k for k, v in enumerate(variants) for t in range(40 - 15) for left in range(48 - 15)
                if torch.equal(v[:, t:t + 16, left:left + 16], gt)]
        assert hits, f"epoch {epoch}: the crop is not a window of the (flipped) image"
        found.update(hits)
    assert len(found) >= 3  # several flip combinations occur


def test_lq_smaller_by_an_integer_factor_is_upscaled(tmp_path):
    write_png(tmp_path / "gt" / "a.png", _image(0, 40, 48))
    write_png(tmp_path / "lq" / "a.png", _image(0, 10, 12))
    s = PairedFolders(tmp_path, crop=16).sample(0)
    assert s["lq"].shape == s["gt"].shape == (3, 16, 16)
    write_png(tmp_path / "lq" / "a.png", _image(0, 20, 12))
    with pytest.raises(ValueError, match=r"LQ image '.*lq/a\.png' is 20x12 but its GT '.*gt/a\.png' is 40x48"):
        PairedFolders(tmp_path)


def test_unmatched_names_are_all_reported(tmp_path):
    _pairs(tmp_path, ["a", "b", "c"], lq_names=["a", "b", "d", "e"])
    with pytest.raises(ValueError, match=r"2 in lq_dir '.*lq' have no GT: d, e; 1 in gt_dir '.*gt' have no LQ: c"):
        PairedFolders(tmp_path)


def test_many_unmatched_names_are_counted(tmp_path):
    _pairs(tmp_path, ["a"], lq_names=["a"] + [f"x{i:02d}" for i in range(13)], h=16, w=16)
    with pytest.raises(ValueError, match=r"13 in lq_dir .* have no GT: x00, x01, .*, x09, \.\.\. and 3 more$"):
        PairedFolders(tmp_path)


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match=r"lq_dir '.*lq' does not exist"):
        PairedFolders(tmp_path)
    with pytest.raises(ValueError, match=r"give root \(a folder holding lq/ and gt/\) or both lq_dir and gt_dir"):
        PairedFolders(lq_dir=tmp_path)
    _pairs(tmp_path, ["a"])
    write_png(tmp_path / "lq" / "a.jpg", _image(0))
    with pytest.raises(ValueError, match=r"lq_dir holds two images named 'a': a\.jpg and a\.png"):
        PairedFolders(tmp_path)


def test_unreadable_and_small_images_fail_before_training(tmp_path):
    _pairs(tmp_path, ["a", "b"])
    write_png(tmp_path / "gt" / "b.png", _image(1, 20, 30))
    write_png(tmp_path / "lq" / "b.png", _image(1, 20, 30))
    with pytest.raises(ValueError, match=r"crop 32x32 \(height x width\) is larger than 1 image\(s\): "
                                         r"'.*gt/b\.png' \(20x30\); use a smaller crop"):
        PairedFolders(tmp_path, crop=32)
    (tmp_path / "gt" / "b.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"cannot read image '.*gt/b\.png'"):
        PairedFolders(tmp_path, crop=16)
    whole = write_png(tmp_path / "gt" / "b.png", _image(1, 20, 30)).read_bytes()
    (tmp_path / "gt" / "b.png").write_bytes(whole[: len(whole) // 2])  # header intact, pixels cut off
    lazy = PairedFolders(tmp_path, crop=16)
    with pytest.raises(ValueError, match=r"cannot read image '.*gt/b\.png'"):
        lazy.sample(1)
    with pytest.raises(ValueError, match=r"cannot read image '.*gt/b\.png'"):
        PairedFolders(tmp_path, crop=16, cache=True)
    with pytest.raises(ValueError, match=r"crop must be None, an integer >= 16 or a \(height, width\) pair"):
        PairedFolders(tmp_path, crop=8)


def test_names_select_a_split(tmp_path):
    _pairs(tmp_path, ["a", "b", "c", "d"])
    data = PairedFolders(tmp_path, names=["d", "b"])
    assert data.names == ["b", "d"] and data.sample(1)["name"] == "d"
    with pytest.raises(ValueError, match=r"names not found in lq_dir .*: z"):
        PairedFolders(tmp_path, names=["a", "z"])
    with pytest.raises(ValueError, match=r"index must be an integer in 0..1, got 2"):
        data.sample(2)


def test_synthetic_pairs_are_reproducible_crops_of_the_clean_image():
    clean = [_image(0, 40, 48), _image(1, 48, 40)]
    data = SyntheticPairs(clean, "denoise", seed=3, crop=16, hflip=False, options={"sigma": 0.1})
    assert data.names == ["image_0000", "image_0001"]
    s = data.sample(0, 2)
    assert s["task"] == "denoise" and s["lq"].shape == (3, 16, 16)
    assert any(torch.equal(clean[0][:, t:t + 16, left:left + 16], s["gt"]) for t in range(25) for left in range(33))
    assert 0.07 < float((s["lq"] - s["gt"]).std()) < 0.12
    again = SyntheticPairs(clean, "denoise", seed=3, crop=16, hflip=False, options={"sigma": 0.1}).sample(0, 2)
    assert torch.equal(again["lq"], s["lq"]) and torch.equal(again["gt"], s["gt"])
    assert not torch.equal(data.sample(0, 3)["lq"], s["lq"])
    assert not torch.equal(SyntheticPairs(clean, "denoise", seed=4, crop=16).sample(0, 2)["lq"], s["lq"])


def test_synthetic_pairs_from_a_folder(tmp_path):
    for i, n in enumerate(["x", "y"]):
        write_png(tmp_path / f"{n}.png", _image(i))
    data = SyntheticPairs(tmp_path, "dehaze", crop=32)
    assert data.names == ["x", "y"] and data.sample(1)["name"] == "y"
    cached = SyntheticPairs(tmp_path, "dehaze", crop=32, cache=True)
    assert torch.equal(cached.sample(1, 4)["lq"], data.sample(1, 4)["lq"])


def test_synthetic_pairs_check_task_options_and_sizes_up_front():
    clean = [_image(0, 40, 48)]
    with pytest.raises(ValueError, match=r"task must be one of \[.*\], got 'fog'"):
        SyntheticPairs(clean, "fog")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['strength'\] for task 'denoise'"):
        SyntheticPairs(clean, "denoise", options={"strength": 1})
    with pytest.raises(ValueError, match=r"length 33 needs images larger than 16 pixels per side, got 16x16"):
        SyntheticPairs(clean, "deblur", crop=16, options={"length": (3, 33)})
    with pytest.raises(ValueError, match=r"is larger than 1 image\(s\): 'image_0000' \(40x48\)"):
        SyntheticPairs(clean, "denoise", crop=(44, 44))
    with pytest.raises(ValueError, match=r"clean image file '.*nope\.png' does not exist"):
        SyntheticPairs(["nope.png"], "denoise")
    with pytest.raises(ValueError, match=r"clean must hold either image files or tensors, not both"):
        SyntheticPairs(["nope.png", clean[0]], "denoise")


def test_task_mix_frequencies():
    clean = [_image(0, 32, 32)]
    parts = [(SyntheticPairs(clean, t, crop=16), f) for t, f in (("sr", 4), ("denoise", 1), ("dehaze", 1))]
    mix = TaskMix(parts, seed=11, length=3000)
    counts = torch.zeros(3)
    for i in range(3000):
        counts[mix.choose(i, 0)[0]] += 1
    torch.testing.assert_close(counts / 3000, torch.tensor([4 / 6, 1 / 6, 1 / 6]), atol=0.025, rtol=0)
    part, item, key = mix.choose(5, 1)
    s = mix.sample(5, 1)
    assert s["task"] == ["sr", "denoise", "dehaze"][part]
    assert torch.equal(s["lq"], parts[part][0].sample(item, key)["lq"])


def test_task_mix_checks_its_parts():
    a = SyntheticPairs([_image(0)], "denoise", crop=16)
    b = SyntheticPairs([_image(0)], "denoise", crop=32)
    with pytest.raises(ValueError, match=r"all parts must use the same crop"):
        TaskMix([(a, 1), (b, 1)])
    with pytest.raises(ValueError, match=r"parts\[1\] frequency must be a finite number > 0, got 0"):
        TaskMix([(a, 1), (a, 0)])
    assert len(TaskMix([(a, 1), (a, 2)])) == 2


def test_split_holdout_is_deterministic_by_name():
    names = [f"img{i:02d}" for i in range(20)]
    train, held = split_holdout(names, 4)
    assert len(held) == 4 and sorted(train + held) == names and not set(train) & set(held)
    assert split_holdout(list(reversed(names)), 4)[1] == list(reversed(held))
    assert split_holdout([f"gt/{n}.png" for n in names], 4)[1] == [f"gt/{n}.png" for n in held]
    assert len(split_holdout(names, 0.25)[1]) == 5
    # one new file moves at most one old file, and only from held-out to training
    train2, held2 = split_holdout(names + ["img99"], 4)
    assert len(set(held) - set(held2)) <= 1 and set(train) <= set(train2)
    with pytest.raises(ValueError, match=r"holdout must be an integer count in 0..19 or a fraction"):
        split_holdout(names, 20)


def test_channel_shuffle_permutes_lq_and_gt_together_and_keeps_the_stream():
    from trajir.data.transforms import random_crop_flip

    img = torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(0))
    other = img * 0.5
    plain = random_crop_flip([img, other], (16, 16), torch.Generator().manual_seed(1))
    perms = set()
    for seed in range(1, 12):
        a, b = random_crop_flip([img, other], (16, 16), torch.Generator().manual_seed(seed), shuffle_channels=True)
        ref, _ = random_crop_flip([img, other], (16, 16), torch.Generator().manual_seed(seed))
        perm = [int((ref - a[c]).abs().flatten(1).sum(1).argmin()) for c in range(3)]
        assert sorted(perm) == [0, 1, 2] and torch.equal(a, ref[perm]) and torch.equal(b, a * 0.5)
        perms.add(tuple(perm))
        if seed == 1:  # the crop and flips are those of the unshuffled call with the same seed
            assert torch.equal(ref, plain[0])
    assert len(perms) > 1
