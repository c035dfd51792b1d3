"""Child-process script of the in-process real-ComfyUI tests (run by ``comfy_harness.inprocess_results``).

Imports ComfyUI from $COMFYUI_PATH as a library on the CPU (docs/comfyui.md §8), loads this pack as ComfyUI would
(a package with relative imports), builds a tiny random FLUX and a tiny 16-channel VAE, drives our nodes through
ComfyUI's own node classes (SamplerCustomAdvanced, SamplerCustom, CFGGuider, ...) and prints one JSON line of
measured numbers and error messages; ``test_nodes_comfyui_inprocess.py`` asserts on them.
Usage: comfy_inprocess_checks.py OUTPUT_DIR
"""
import importlib.util
import json
import os
import pathlib
import sys
import traceback

TESTS = pathlib.Path(__file__).resolve().parent
REPO = TESTS.parent


def _load(name, path, package=False):
    kwargs = {"submodule_search_locations": [str(path.parent)]} if package else {}
    spec = importlib.util.spec_from_file_location(name, path, **kwargs)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _error(fn):
    """The message of the ValueError ``fn()`` raises ("" when it raises nothing)."""
    try:
        fn()
    except ValueError as e:
        return str(e)
    return ""


def main(out_dir):
    sys.path.insert(0, os.environ["COMFYUI_PATH"])
    from comfy.cli_args import args

    args.cpu = True  # before comfy.model_management is imported (docs/comfyui.md §8)
    import comfy.model_management as mm
    import comfy.model_sampling
    import comfy.sample
    import comfy.samplers
    import comfy.utils
    import folder_paths
    import torch
    from comfy_extras import nodes_custom_sampler as ncs
    from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete

    torch.set_grad_enabled(False)  # ComfyUI runs nodes without autograd
    folder_paths.set_output_directory(out_dir)
    pack = _load("trajir_pack", REPO / "__init__.py", package=True)
    probe = _load("trajir_test_probe", TESTS / "comfy_probe_pack.py")
    ours = pack.NODE_CLASS_MAPPINGS
    from trajir_pack.trajir.best_of_n import load_branch
    from trajir_pack.trajir.conditioning import load_conditioning
    from trajir_pack.trajir.rewards import Reward

    torch.manual_seed(0)
    model = probe.build_tiny_flux(0)
    vae = probe.build_tiny_vae(0)
    g = torch.Generator().manual_seed(1)
    positive = [[torch.randn(1, 4, 4096, generator=g), {"pooled_output": torch.randn(1, 768, generator=g),
                                                        "guidance": 3.5}]]
    negative = probe.zero_flux_conditioning()
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    clean = torch.stack([xx, yy, 0.5 + 0.4 * torch.sin(6 * xx * yy)], dim=-1)[None]  # IMAGE [1, 64, 64, 3]
    lq_latent = {"samples": vae.encode(clean)}
    empty = {"samples": torch.zeros(1, 16, 8, 8)}
    sigmas = ncs.BasicScheduler().get_sigmas(model, "simple", 6, 1.0)[0]
    cfg_guider = ncs.CFGGuider().get_guider(model, positive, negative, 2.0)[0]
    euler = ncs.KSamplerSelect().get_sampler("euler")[0]
    msde = ours["TrajIRMSDESampler"]()
    process_in = model.model.process_latent_in

    progress = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: progress.append(value))

    def advanced(guider, sampler, sig, latent, seed=7):
        noise = ncs.RandomNoise().get_noise(seed)[0]
        return ncs.SamplerCustomAdvanced().sample(noise, guider, sampler, sig, latent)[0]["samples"]

    def diff(a, b):
        return float((a.float() - b.float()).abs().max())

    results = {}

    def check(name):
        def wrap(fn):
            try:
                results[name] = fn()
            except Exception:  # noqa: BLE001  (reported to the test, which fails with the traceback)
                results[name] = {"crash": traceback.format_exc()}
        return wrap

    @check("sampler")
    def _():
        ref = advanced(cfg_guider, euler, sigmas, empty)
        ours0 = msde.get_sampler(0.0, "constant", "percent", 0.0, 1.0, 1.0)[0]
        progress.clear()
        adv = advanced(cfg_guider, ours0, sigmas, empty)
        progress_events = len(progress)
        custom_ref = ncs.SamplerCustom().sample(model, True, 7, 2.0, positive, negative, euler, sigmas, empty)[0]
        custom = ncs.SamplerCustom().sample(model, True, 7, 2.0, positive, negative, ours0, sigmas, empty)[0]
        sde = msde.get_sampler(1.0, "constant", "percent", 0.0, 1.0, 1.0)[0]
        a, b = advanced(cfg_guider, sde, sigmas, empty, 7), advanced(cfg_guider, sde, sigmas, empty, 7)
        c = advanced(cfg_guider, sde, sigmas, empty, 8)
        empty_window = msde.get_sampler(1.0, "constant", "sigma", 1e-4, 0.0, 1.0)[0]
        eps_model = ModelSamplingDiscrete().patch(model, "eps", False)[0]
        v_model = ModelSamplingDiscrete().patch(model, "v_prediction", False)[0]
        eps_sigmas = ncs.BasicScheduler().get_sigmas(eps_model, "simple", 6, 1.0)[0]
        eps_guider = ncs.CFGGuider().get_guider(eps_model, positive, negative, 2.0)[0]
        eps_sde = advanced(eps_guider, sde, eps_sigmas, empty)

        class Cosmos(comfy.model_sampling.ModelSamplingCosmosRFlow, comfy.model_sampling.COSMOS_RFLOW):
            pass

        param = pack.nodes.comfy_bridge.parameterisation
        return {
            "steps": len(sigmas) - 1, "progress_events": progress_events,
            "eta0_vs_euler_advanced": diff(adv, ref), "eta0_vs_euler_custom": diff(custom["samples"],
                                                                                   custom_ref["samples"]),
            "eta1_repeat": diff(a, b), "eta1_vs_euler": diff(a, ref), "eta1_other_seed": diff(a, c),
            "eta1_finite": bool(torch.isfinite(a).all()),
            "empty_window_vs_euler": diff(advanced(cfg_guider, empty_window, sigmas, empty), ref),
            "params": [param(m.get_model_object("model_sampling")) for m in (model, eps_model, v_model)],
            "eps_sigma_max": float(eps_sigmas[0]),
            "eps_eta0_vs_euler": diff(advanced(eps_guider, ours0, eps_sigmas, empty),
                                      advanced(eps_guider, euler, eps_sigmas, empty)),
            "eps_eta1_finite": bool(torch.isfinite(eps_sde).all()),
            "eps_eta1_vs_euler": diff(eps_sde, advanced(eps_guider, euler, eps_sigmas, empty)),
            "cosmos_error": _error(lambda: param(Cosmos())),
            "bad_window_error": _error(lambda: msde.get_sampler(1.0, "constant", "percent", 0.8, 0.2, 1.0)),
        }

    @check("guider")
    def _():
        node = ours["TrajIRNegativeLQGuidance"]()
        lq = {"samples": vae.encode(clean)}
        w0 = node.get_guider(model, positive, negative, lq, 2.0, 0.0)[0]
        hooked = model.clone()
        calls = {"pre": 0, "post": 0}

        def pre(args):
            calls["pre"] += 1
            return [args["conds_out"][0] * 1.1, args["conds_out"][1]]

        def post(args):
            calls["post"] += 1
            return args["denoised"] * 0.9 + 0.01

        hooked.set_model_sampler_pre_cfg_function(pre)
        hooked.set_model_sampler_post_cfg_function(post)
        hooked_cfg = ncs.CFGGuider().get_guider(hooked, positive, negative, 2.0)[0]
        hooked_w0 = node.get_guider(hooked, positive, negative, lq, 2.0, 0.0)[0]
        ref_hooked = advanced(hooked_cfg, euler, sigmas, lq)
        calls_cfg = dict(calls)
        ours_hooked = advanced(hooked_w0, euler, sigmas, lq)

        def one_shot(model_k, x, sig, extra_args=None, callback=None, disable=None):
            return model_k(x, sig[0] * x.new_ones([x.shape[0]]), **extra_args)

        shot = comfy.samplers.KSAMPLER(one_shot)
        sig = torch.tensor([1.0, 0.0])
        x0_cfg = process_in(advanced(cfg_guider, shot, sig, lq))
        w = 0.5
        x0_ngs = process_in(advanced(node.get_guider(model, positive, negative, lq, 2.0, w)[0], shot, sig, lq))
        expected = (1 + w) * x0_cfg - w * process_in(lq["samples"])
        outside = node.get_guider(model, positive, negative, lq, 2.0, w, "sigma", 0.5, 0.0)[0]
        big = {"samples": torch.zeros(1, 16, 12, 12)}
        return {
            "w0_vs_cfg": diff(advanced(w0, euler, sigmas, lq), advanced(cfg_guider, euler, sigmas, lq)),
            "w0_vs_cfg_with_hooks": diff(ours_hooked, ref_hooked),
            "hooks_change_output": diff(ref_hooked, advanced(cfg_guider, euler, sigmas, lq)),
            "hook_calls_cfg": calls_cfg, "hook_calls_total": dict(calls),
            "ngs_vs_formula": diff(x0_ngs, expected), "ngs_vs_cfg": diff(x0_ngs, x0_cfg),
            "outside_window_vs_cfg": diff(process_in(advanced(outside, shot, sig, lq)), x0_cfg),
            "size_error": _error(lambda: advanced(node.get_guider(model, positive, negative, lq, 1.0, w)[0],
                                                  euler, sigmas, big)),
            "channel_error": _error(lambda: node.get_guider(model, positive, negative,
                                                            {"samples": torch.zeros(1, 4, 8, 8)}, 1.0, w)),
        }

    @check("initial_state")
    def _():
        node = ours["TrajIRLQInitialState"]()
        seen = {}

        def record(model_k, x, sig, extra_args=None, callback=None, disable=None):
            seen["x"], seen["sigmas"] = x.clone(), sig.clone()
            return x

        recorder = comfy.samplers.KSAMPLER(record)
        guider = ncs.BasicGuider().get_guider(model, positive)[0]
        y = process_in(lq_latent["samples"])
        noise = comfy.sample.prepare_noise(lq_latent["samples"], 3)
        out = {}
        latent, cut = node.run(model, lq_latent, sigmas, "step", 1, 0.97)
        advanced(guider, recorder, cut, latent, 3)
        t = float(cut[0])
        out["t_start"], out["schedule_t1"] = t, float(sigmas[1])
        out["eq17"] = diff(seen["x"], (1 - t) * y + t * noise)
        latent, cut = node.run(model, lq_latent, sigmas, "step", 1, 0.97, 0.3)
        advanced(guider, recorder, cut, latent, 3)
        out["eq17_weight"] = diff(seen["x"], 0.3 * y + t * noise)
        latent, cut = node.run(model, lq_latent, sigmas, "sigma", 0, 0.8)
        advanced(guider, recorder, cut, latent, 3)
        out["sigma_mode_first"] = float(seen["sigmas"][0])
        out["sigma_mode_rest"] = [float(s) for s in seen["sigmas"][1:]]
        out["schedule"] = [float(s) for s in sigmas]
        out["channel_error"] = _error(lambda: node.run(model, {"samples": torch.zeros(1, 4, 8, 8)}, sigmas,
                                                       "step", 1, 0.97))
        out["ve_weight_error"] = _error(lambda: node.run(ModelSamplingDiscrete().patch(model, "eps", False)[0],
                                                         lq_latent, sigmas, "step", 1, 0.97, 0.3))
        return out

    @check("best_of_n")
    def _():
        node = ours["TrajIRBestOfN"]()
        guider = ours["TrajIRNegativeLQGuidance"]().get_guider(model, positive, negative, lq_latent, 1.0, 0.05)[0]
        latent, cut = ours["TrajIRLQInitialState"]().run(model, lq_latent, sigmas, "step", 1, 0.97)
        noise = ncs.RandomNoise().get_noise(5)[0]
        reward = Reward({"psnr": 1.0})
        best_latent, best_image, images, table = node.run(guider, noise, cut, latent, vae, reward, 3, "single_step",
                                                          1, 1.0, "fixed", 2, clean, True, "trajir/branches/test")
        mse = ((images - clean) ** 2).mean(dim=(1, 2, 3))
        psnr = (10 * torch.log10(1 / mse)).tolist()
        best = int(torch.tensor(psnr).argmax())
        ode = vae.decode(advanced(guider, euler, cut, latent, 5))
        path = table.rsplit("saved ", 1)[-1].strip()
        record = load_branch(path)
        throughout = node.run(guider, noise, cut, latent, vae, reward, 2, "throughout", 2, 0.7, "random", 4, clean)
        out = {
            "psnr": psnr, "best": best, "table": table, "n_images": images.shape[0],
            "best_image_vs_candidate": diff(best_image[0], images[best]),
            "candidate0_vs_euler": diff(images[0], ode[0]),
            "candidates_distinct": diff(images[1], images[2]),
            "saved_path": path, "saved_inside_output": path.startswith(os.path.realpath(out_dir)),
            "record_t": float(record["t"][0]), "record_t_next": float(record["t_next"][0]),
            "record_reward": float(record["reward"][0]), "record_shape": list(record["x_t"].shape),
            "record_eta": float(record["eta"][0]), "record_keys": sorted(k for k in record if k != "param"),
            "record_context_shape": list(record["context"].shape),
            "cut": [float(s) for s in cut], "best_latent_shape": list(best_latent["samples"].shape),
            "throughout_images": throughout[2].shape[0],
            "throughout_candidate0_vs_euler": diff(throughout[2][0], ode[0]),
        }

        def run(**kw):
            args = {"guider": guider, "noise": noise, "sigmas": cut, "latent_image": latent, "vae": vae,
                    "reward": reward, "candidates": 2, "mode": "single_step", "branch_step": 1, "eta": 1.0,
                    "eta_mode": "fixed", "batch_size": 2, "reference": clean}
            args.update(kw)
            return node.run(**args)

        out["n0_error"] = _error(lambda: run(candidates=0))
        out["channel_error"] = _error(lambda: run(latent_image={"samples": torch.zeros(1, 4, 8, 8)}))
        out["dotdot_error"] = _error(lambda: run(save_branch=True, filename="../escape"))
        out["absolute_error"] = _error(lambda: run(save_branch=True, filename="/tmp/escape"))
        out["reference_error"] = _error(lambda: run(reference=None))
        out["branch_step_error"] = _error(lambda: run(branch_step=4))
        fraction_table = run(branch_step=99, branch_at="fraction", branch_fraction=0.5, save_branch=True,
                             filename="trajir/branches/fraction")[3]
        fraction_record = load_branch(fraction_table.rsplit("saved ", 1)[-1].strip())
        out["fraction_record_t"] = float(fraction_record["t"][0])
        out["fraction_record_t_next"] = float(fraction_record["t_next"][0])
        out["fraction_error"] = _error(lambda: run(branch_at="fraction", branch_fraction=1.5))
        lq_small = {"samples": vae.encode(clean[:, :48, :48])}
        small_guider = ours["TrajIRNegativeLQGuidance"]().get_guider(model, positive, negative, lq_small, 1.0, 0.1)[0]
        out["lq_size_error"] = _error(lambda: run(guider=small_guider))
        return out

    @check("video_latents")
    def _():
        """LQ Initial State, Negative LQ Guidance and the M-SDE Sampler on 5-D [B, C, 1, h, w] latents (Qwen-Image,
        Wan 2.1 latent format) through SamplerCustomAdvanced."""
        qwen = probe.build_tiny_qwen_image(0)
        text = [[torch.randn(1, 4, 64, generator=torch.Generator().manual_seed(2)), {}]]
        lq5 = {"samples": torch.randn(1, 16, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 0.5}
        y5 = qwen.model.process_latent_in(lq5["samples"])
        sig5 = ncs.BasicScheduler().get_sigmas(qwen, "simple", 4, 1.0)[0]
        seen = {}

        def record(model_k, x, sig, extra_args=None, callback=None, disable=None):
            seen["x"] = x.clone()
            return x

        def one_shot(model_k, x, sig, extra_args=None, callback=None, disable=None):
            return model_k(x, sig[0] * x.new_ones([x.shape[0]]), **extra_args)

        basic = ncs.BasicGuider().get_guider(qwen, text)[0]
        latent, cut = ours["TrajIRLQInitialState"]().run(qwen, lq5, sig5, "step", 1, 0.97)
        advanced(basic, comfy.samplers.KSAMPLER(record), cut, latent, 3)
        t = float(cut[0])
        noise = comfy.sample.prepare_noise(lq5["samples"], 3)
        node = ours["TrajIRNegativeLQGuidance"]()
        w = 0.5
        sig = torch.tensor([1.0, 0.0])
        shot = comfy.samplers.KSAMPLER(one_shot)
        x0_cfg = qwen.model.process_latent_in(advanced(node.get_guider(qwen, text, text, lq5, 1.0, 0.0)[0], shot, sig,
                                                       lq5))
        x0_ngs = qwen.model.process_latent_in(advanced(node.get_guider(qwen, text, text, lq5, 1.0, w)[0], shot, sig,
                                                       lq5))
        guider = node.get_guider(qwen, text, text, lq5, 1.0, 0.05)[0]
        sde = msde.get_sampler(0.5, "constant", "percent", 0.0, 1.0, 1.0)[0]
        sampled = advanced(guider, sde, cut, latent, 4)
        return {
            "latent_shape": list(latent["samples"].shape), "eq17": diff(seen["x"], (1 - t) * y5 + t * noise),
            "ngs_vs_formula": diff(x0_ngs, (1 + w) * x0_cfg - w * y5), "ngs_vs_cfg": diff(x0_ngs, x0_cfg),
            "sampled_shape": list(sampled.shape), "sampled_finite": bool(torch.isfinite(sampled).all()),
            "rank3_error": _error(lambda: ours["TrajIRLQInitialState"]().run(
                qwen, {"samples": torch.zeros(16, 8, 8)}, sig5, "step", 1, 0.97)),
        }

    @check("scale_with_cap")
    def _():
        from trajir_pack.trajir.data.transforms import capped_size

        node = ours["TrajIRScaleWithCap"]()
        image = clean[:, :48, :40]                                      # IMAGE [1, 48, 40, 3]
        free = node.scale(image, 2.0, 1.0, "bicubic")[0]
        capped = node.scale(image, 4.0, 0.01, "lanczos")[0]             # 10486 pixels at most
        reference = comfy.utils.common_upscale(image.movedim(-1, 1), 80, 96, "bicubic", "disabled").movedim(1, -1)
        return {"free_shape": list(free.shape), "capped_shape": list(capped.shape),
                "expected_capped": list(capped_size(48, 40, 4.0, 0.01)),
                "free_vs_comfy": diff(free, reference.clamp(0, 1)),
                "method_error": _error(lambda: node.scale(image, 2.0, 1.0, "bislerp"))}

    @check("interrupt")
    def _():
        hooked = model.clone()
        calls = [0]

        def post(args):
            calls[0] += 1
            if calls[0] == 2:  # the user presses Cancel during the second model call
                mm.interrupt_current_processing(True)
            return args["denoised"]

        hooked.set_model_sampler_post_cfg_function(post)
        guider = ncs.CFGGuider().get_guider(hooked, positive, negative, 1.0)[0]
        out = {}
        for name, action in (
            ("sampler", lambda: advanced(guider, msde.get_sampler(1.0, "constant", "percent", 0.0, 1.0, 1.0)[0],
                                         sigmas, empty)),
            ("best_of_n", lambda: ours["TrajIRBestOfN"]().run(guider, ncs.RandomNoise().get_noise(1)[0], sigmas,
                                                                empty, vae, Reward({"niqe": 1.0}), 4, "throughout",
                                                                1, 1.0, "fixed", 1)),
        ):
            calls[0] = 0
            try:
                action()
                out[name] = {"interrupted": False, "calls": calls[0]}
            except mm.InterruptProcessingException:
                out[name] = {"interrupted": True, "calls": calls[0]}
            mm.interrupt_current_processing(False)
        return out

    @check("save_conditioning")
    def _():
        node = ours["TrajIRSaveConditioning"]()
        first = node.save(positive, "trajir/prompts/test", "sharp, deblurred, clear")["result"][0]
        second = node.save(positive, "trajir/prompts/test")["result"][0]
        loaded = load_conditioning(first)
        return {
            "first": os.path.relpath(first, out_dir), "second": os.path.relpath(second, out_dir),
            "context_diff": diff(loaded["context"], positive[0][0][0]), "pooled_diff": diff(loaded["pooled"],
                                                                                            positive[0][1][
                                                                                                "pooled_output"][0]),
            "guidance": loaded["guidance"], "prompt": loaded["prompt"],
            "dotdot_error": _error(lambda: node.save(positive, "../escape")),
            "absolute_error": _error(lambda: node.save(positive, os.path.join(out_dir, "abs"))),
            "not_flux_error": _error(lambda: node.save([[torch.zeros(1, 77, 768), {}]], "x")),
        }

    @check("compact_restore")
    def _():
        from trajir_pack.trajir.compact import load_compact, restore

        node = ours["TrajIRCompactRestore"]()
        choice = node.INPUT_TYPES()["required"]["model"][0][0]
        image = torch.cat([clean, clean.flip(1)])                      # IMAGE [2, 64, 64, 3]
        before = len(progress)
        out = node.restore(image, choice, 3, 256)[0]
        net, recipe = load_compact(pack.nodes.compact_restore.model_file(choice))
        ref = torch.cat([restore(net, recipe, image[i:i + 1].permute(0, 3, 1, 2), seed=3 + i) for i in range(2)])
        return {"choice": choice, "shape": list(out.shape), "vs_library": diff(out.permute(0, 3, 1, 2), ref),
                "progress_events": len(progress) - before}

    print("TRAJIR_RESULTS " + json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
