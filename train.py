"""Train the Conv-VAE on CelebA shards (64×64 by default, 128×128 with configs/celeba128.json), end to end.

    python train.py                          # default run: synthetic faces, a few minutes on 2 CPU cores
    python train.py --data shards/ --epochs 10 --beta 2 --out runs/b2
    python train.py --out runs/b2 --resume   # continue exactly where last.pt left off
    torchrun --nproc_per_node=2 train.py ... # DDP (NCCL on GPU, gloo on CPU); batch_size is per process

Reads top to bottom: config → runtime → model + optimizer → data → step → loop → test → artifacts.
Every hyper-parameter is in config.json; any key can be overridden as ``--key value``.
Loss per image = SSE(sigmoid(logits), x) summed over pixels + β·KL summed over latents; the batch
loss is their mean over the batch (the negative ELBO when β = 1).

A run can be stopped at any moment and continued with ``--resume``: Ctrl-C or SIGTERM finishes the
step, writes ``last.pt`` at it and prints the command that resumes (model/training/signals.py);
checkpoints, metrics and pictures are written atomically, so kill -9 or a full disk never leaves a
torn file, one run directory has one writer (model/training/checkpoint.py); and a resumed run
computes as its start did (the checkpoint keeps amp, channels_last and compile).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from model.evaluation import eval_settings, evaluate_model, evaluation_table, scalars_of
from model.training.checkpoint import (BestState, CheckpointWriter, DiskFull, LastCheckpoint, RunLock, check_fresh_run,
                                       load_checkpoint, load_model_state, make_checkpoint, remove_temps, save_atomic,
                                       set_rng_state, write_text)
from model.training.config import (build_parser, check_bounds, layered_keys, model_mismatch, parse_overrides,
                                   read_config_file, validate as validate_config)
from model.training.data import check_shards, open_loader, prepare_default_data
from model.training.observe import (EpochProgress, FirstImages, LogSinks, MetricsLog, TensorBoardLog, epoch_table,
                                    make_console, mfu_meter, plot_interpolation, plot_pairs, plot_samples,
                                    plot_training_log)
from model.training.runtime import (REPLAN_AT, REPLAN_MAX, decide_compile, from_rank0, init_distributed,
                                    keep_resumed_choices, launch_rank, probe_step, replanned_steps, resolve_length,
                                    resolve_runtime, runtime_choices, shutdown_distributed)
from model.training.signals import StopSignals, resume_command
from model.training.step import (Cadence, CheckpointPolicy, TrainingDiverged, TrainStep, build_training,
                                 schedule_tables, schedules_agree)
from model.training.validate import ElboSums, validate
from pipeline.errors import (ConfigError, Interrupted, cli_entry, disk_full_message, is_disk_full, same_command,
                             signal_name)


@dataclass
class Run:
    """What main() settles before training starts: where the run lives, which process this is, how it began."""

    dir: Path
    last: LastCheckpoint  # the newest complete last.pt: what a stop or a failure leaves to resume from
    rank: int
    local_rank: int
    world_size: int
    t_start: float
    download: bool = False  # --download-perceptual-weights
    explicit: set[str] = field(default_factory=set)  # config keys given on the command line
    layered: set[str] = field(default_factory=set)  # config keys a --config file set (to other than config.json's)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    t_start = time.perf_counter()

    # ------------------------------------------------------------------ config
    parser = build_parser(prog="train.py", description="Train the Conv-VAE (see config.json for every key).")
    parser.add_argument("--out", metavar="DIR", help="run directory (default: OUT_DIR/NAME from config)")
    parser.add_argument("--resume", action="store_true", help="continue from the run directory's checkpoints/last.pt")
    parser.add_argument("--download-perceptual-weights", action="store_true",
                        help="let torch.hub download the VGG weights of perceptual_weight > 0 when they are not found")
    parser.add_argument("--break-lock", action="store_true",
                        help="take over a run directory whose lock names another host (its locks may be invisible "
                             "here): only once you have checked that run has ended")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in a run directory that holds another run: its checkpoints, metrics and "
                             "pictures are removed first (without this, such a directory is refused)")
    args, overrides = parse_overrides(parser, argv)
    base = read_config_file(args.config)
    layered = layered_keys(base)
    run_dir = Path(args.out) if args.out else Path(overrides.get("out_dir", base["out_dir"])) / overrides.get("name", base["name"])
    ckpt_dir = run_dir / "checkpoints"
    with RunLock(run_dir, enabled=launch_rank() == 0, break_lock=args.break_lock) as lock:  # one trainer per run dir
        for notice in lock.notices:
            print(notice, file=sys.stderr)
        for folder in (run_dir, ckpt_dir) if lock.enabled else ():
            remove_temps(folder)  # half-written files of a killed run (the lock says nobody else writes)
        resume = None
        if args.resume:
            resume = load_checkpoint(ckpt_dir / "last.pt")
            base = {**base, **resume["config"]}  # the run's own settings; the command line still wins
        cfg = validate_config({**base, **overrides})
        check_bounds(cfg)
        if resume is not None and (diff := model_mismatch(resume["config"], cfg)):
            raise ConfigError(f"checkpoint {ckpt_dir / 'last.pt'} is from another model config ({'; '.join(diff)})")
        # After the config is known good, so that a typo never costs an --overwrite'd run; before any write.
        for notice in check_fresh_run(run_dir, resume=args.resume, overwrite=args.overwrite) if lock.enabled else ():
            print(notice, file=sys.stderr)

        rank, local_rank, world_size = init_distributed()
        last = LastCheckpoint(ckpt_dir / "last.pt", resume["step"] if resume else None)
        try:
            with contextlib.ExitStack() as closing:  # what _run opens that must close on every path
                run = Run(run_dir, last, rank, local_rank, world_size, t_start,
                          download=args.download_perceptual_weights, explicit=set(overrides), layered=layered)
                return _run(cfg, run, resume, closing)
        except (KeyboardInterrupt, DiskFull) as err:
            raise _with_resume_hint(err, last, run_dir) from None
        except OSError as err:  # a full disk outside the run's own writes (data, caches): the same resume line
            if not is_disk_full(err):
                raise
            full = DiskFull(disk_full_message(err.filename if err.filename is not None else run_dir, err))
            raise _with_resume_hint(full, last, run_dir) from None
        finally:
            shutdown_distributed()


def _run(cfg: dict, run: Run, resume: dict | None, closing: contextlib.ExitStack) -> int:
    run_dir, last, rank, world_size = run.dir, run.last, run.rank, run.world_size
    if cfg["deterministic"]:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts: before any matmul
        torch.use_deterministic_algorithms(True)
    rt = resolve_runtime(cfg, rank, run.local_rank, run.world_size, probe=probe_step)  # CPU "auto": a timed probe of the step
    if rt.device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg["cudnn_benchmark"] and not cfg["deterministic"]
    # A resumed run computes as its start did (amp, channels_last, compile), unless the command line says otherwise.
    rt, notice = keep_resumed_choices(rt, resume.get("runtime") if resume else None, run.explicit)
    if notice and rt.is_main:
        print(notice, file=sys.stderr)
    console = make_console(rt.is_main)
    ckpt_dir = run_dir / "checkpoints"

    # ------------------------------------------------------------------ model + optimizer
    # Built before any data work, so that a missing VGG weights file ends the run first.
    training = build_training(cfg, rt, download=run.download)
    raw, model, loss_fn, optimizer, scaler, impl = (training.raw, training.model, training.loss_fn, training.optimizer,
                                                    training.scaler, training.impl)
    n_params = sum(p.numel() for p in raw.parameters())

    # ------------------------------------------------------------------ data
    shards = prepare_default_data(cfg, rt, console)
    train_loader = open_loader(cfg, rt, shards, "train", train=True)
    val_loader = open_loader(cfg, rt, shards, "val")
    steps_per_epoch = len(train_loader)  # ≥ 1: make_loader refuses a batch larger than a rank's part
    # The run's length in steps: given, from epochs, or a train_seconds budget divided by this device's step
    t_length = time.perf_counter()  # what a train_seconds budget pays for starts here
    cfg, budget, length_note = resolve_length(cfg, rt, impl, steps_per_epoch=steps_per_epoch,
                                              counts=check_shards(shards), explicit=run.explicit | run.layered,
                                              resuming=resume is not None)
    total_steps = cfg["steps"]
    # CPU compile "auto": on when the steps still to run repay the compile time
    rt = decide_compile(rt, min(total_steps, cfg["stop_at_step"] or total_steps) - (resume["step"] if resume else 0))
    if rt.is_main:  # once data and length are settled: bad input leaves no half-made run dir
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "config.json", json.dumps(cfg, indent=2) + "\n")  # the resolved steps: reruns match
        if length_note:
            console.print(f"[bold]length:[/] {length_note}")

    # ------------------------------------------------------------------ state (fresh or resumed)
    step, start_epoch, skip_batches, best_val_elbo = 0, 0, 0, None
    log = MetricsLog(run_dir / "metrics.jsonl" if rt.is_main else None)
    # Optional TensorBoard events; a resumed run hides what the interrupted one wrote after its checkpoint.
    tb = closing.enter_context(TensorBoardLog(run_dir, enabled=cfg["tensorboard"] and rt.is_main,
                                              purge_step=resume["step"] + 1 if resume else None))
    sinks = LogSinks(log, tb)  # where every record goes; each epoch's progress bar joins while it runs
    if resume is not None:
        load_model_state(raw, resume["model"], ckpt_dir / "last.pt")
        loss_fn.load_state(resume.get("objective"))
        optimizer.load_state_dict(resume["optimizer"])
        if resume["scaler"] is not None:
            scaler.load_state_dict(resume["scaler"])
        step, start_epoch, skip_batches = resume["step"], resume["epoch"], resume["batch_in_epoch"]
        best_val_elbo = resume["best_val_elbo"]
        set_rng_state(resume["rng"])
        log.truncate_after(step, start_epoch)
    else:
        log.reset()
        torch.manual_seed(cfg["seed"] + rank)  # each rank its own eps stream
    # The schedules' value at every step, handed to the device once: the step reads lr and β there. A budgeted
    # run checks its plan at the first log points past REPLAN_AT of it, against the pace its loop kept (the
    # timed step cannot see the loader, the log points or a busy machine): the tables leave room for that.
    checks = [round(f * total_steps) for f in REPLAN_AT] if budget is not None else []
    table_len = int(REPLAN_MAX * total_steps) if budget is not None else total_steps
    lr_table, beta_table = schedule_tables(cfg, total_steps, table_len)
    train_step = TrainStep(model, loss_fn, optimizer, scaler, device=rt.device, autocast=rt.autocast,
                           grad_clip=cfg["grad_clip"], params=training.params, lr_table=lr_table, beta_table=beta_table,
                           start_step=step, compile_mode=rt.step_compile_mode, distributed=rt.distributed)
    train_step.load_log_state(resume.get("log_sums") if resume else None)
    cadence = Cadence(cfg, step)
    # A stop signal is honoured after the step it lands in; the ranks agree on that step every step on CPU
    # (a sub-millisecond collective) and at log points on CUDA (where the log syncs anyway): see signals.py.
    stop = StopSignals(distributed=rt.distributed, check_every=1 if rt.device.type == "cpu" else 0,
                       device=rt.device, announce=rt.is_main)
    policy = CheckpointPolicy(cfg, cadence, stop)  # when last.pt is written and the loop stops
    # Checkpoints: written by a background thread (rank 0); the best state waits on the device for the next write.
    writer = CheckpointWriter(ckpt_dir, rt.device, save=save_atomic, done=last.written)
    closing.callback(writer.drain)  # an error path still lets a write in flight finish
    best = BestState()

    def checkpoint_state(epoch: int, batch_in_epoch: int) -> dict:
        return make_checkpoint(model=raw, optimizer=optimizer, scaler=scaler, step=step, epoch=epoch,
                               batch_in_epoch=batch_in_epoch, best_val_elbo=best_val_elbo, config=cfg,
                               runtime=runtime_choices(rt),
                               extra={"objective": loss_fn.state(), "log_sums": train_step.log_state()})

    def save(epoch: int, batch_in_epoch: int) -> None:
        """last.pt at this step (with best.pt when a better state was kept since the last write); every rank
        calls it at the same steps. A diverged state is never written."""
        bad = train_step.first_bad_step()
        if bad is not None:
            raise diverged(bad, epoch)
        if rt.is_main:
            files = {"best.pt": best.take(), "last.pt": checkpoint_state(epoch, batch_in_epoch)}
            writer.write({name: state for name, state in files.items() if state is not None})
        else:
            last.step = step

    def diverged(bad: int, epoch: int) -> TrainingDiverged:
        writer.drain()
        return TrainingDiverged(f"loss became NaN/inf at step {bad} (epoch {epoch}); training stopped, "
                                f"{last.describe()}. Try a lower lr, a longer kl_warmup_steps or amp off.")

    if rt.is_main:
        console.print(f"[bold]run:[/] {run_dir}  |  {rt.describe()['device_name']} × {world_size}  |  amp {rt.amp}, "
                      f"channels_last {rt.channels_last}, compile {rt.compile_mode if rt.compile else False}, loss {impl}, loader {train_loader.backend}, cache {train_loader.cache}")
        console.print(f"[bold]model:[/] {n_params:,} parameters  |  {steps_per_epoch} steps/epoch × {cfg['epochs']} epochs, "
                      f"global batch {cfg['batch_size'] * world_size}"
                      + (f"  |  resuming at step {step} (epoch {start_epoch + 1}, batch {skip_batches})" if resume else ""))
        console.print(f"[bold]loss:[/] {loss_fn.describe()}, β schedule {cfg['kl_schedule']}")
        if rt.note:
            console.print(f"[bold]auto:[/] {rt.note}")
    mfu = mfu_meter(raw.cfg, rt)  # images/s → MFU on CUDA; None elsewhere

    def replan(at: int, loop_s: float, loop_steps: int) -> int:
        """A check of the budget's plan (rank 0 decides, every rank follows): the new total steps."""
        return from_rank0(lambda: replanned_steps(
            budget, current=total_steps, step=at, loop_s=loop_s, loop_steps=loop_steps,
            spent_s=time.perf_counter() - t_length,
            keeps=lambda total: schedules_agree(cfg, total, total_steps, at)), rt.rank, rt.world_size)

    # ------------------------------------------------------------------ training loop
    train_images, train_seconds = 0, 0.0
    t_loop, loop_start = time.perf_counter(), step
    replans = []  # (step, steps before, steps after) of each check
    images_per_step = cfg["batch_size"] * world_size
    epoch = start_epoch - 1  # a resumed, already finished run goes straight to the test
    with stop:  # inside, SIGINT/SIGTERM stop the loop after the current step, with a checkpoint
        while epoch + 1 < cfg["epochs"]:  # read at each epoch: a budget's re-plan moves the end
            epoch += 1
            train_loader.set_epoch(epoch)
            batches = iter(train_loader)
            first = skip_batches if epoch == start_epoch else 0
            epoch_steps = min(steps_per_epoch, total_steps - epoch * steps_per_epoch)  # the last may end early
            for _ in range(first):  # mid-epoch resume: replay the loader to the checkpoint's position
                next(batches)
            t_epoch, epoch_images, t_log, images_since_log = time.perf_counter(), 0, time.perf_counter(), 0
            with sinks.showing(EpochProgress(console, epoch, cfg["epochs"], epoch_steps, completed=first,
                                             device=rt.device)) as progress:
                i = first - 1
                while (i := i + 1) < epoch_steps:  # the end checked before reading: no batch read past it
                    x = next(batches)
                    train_step(x)  # queued on the device: nothing here waits for it
                    step += 1
                    epoch_images += images_per_step
                    images_since_log += images_per_step
                    last_batch = i + 1 == epoch_steps
                    logging = cadence.log_due(step, last_batch)
                    if logging:  # the one host read of a log point: means over every step since the last one
                        means, bad, seconds = train_step.read_logs(time.perf_counter() - t_log)
                        if bad is not None:
                            raise diverged(bad, epoch)
                        now = time.perf_counter()
                        ips = images_since_log / (now - t_log)
                        cadence.logged(step, seconds)
                        record = {"kind": "train", "step": step, "epoch": epoch + 1, "loss": means["loss"],
                                  "rec": means["rec"], "kl": means["kl"], "mse_per_pixel": means["rec"] / x[0].numel(),
                                  "beta": beta_table[min(step, total_steps) - 1], "lr": train_step.lr_at(step - 1),
                                  "images_per_s": ips,
                                  **{k: v for k, v in means.items() if k not in ("loss", "rec", "kl")}}
                        if mfu:
                            record["mfu"] = mfu(ips)
                        sinks.write(record, gpu_util=progress.take_gpu_util())
                        t_log, images_since_log = now, 0
                        if checks and step >= checks[0] and not last_batch:
                            checks = [c for c in checks if c > step]
                            pace, before = (now - t_loop, step - loop_start), total_steps
                            total_steps = replan(step, *pace)
                            replans.append([step, before, total_steps])
                            if total_steps != before:
                                cfg.update(steps=total_steps, epochs=-(-total_steps // steps_per_epoch))
                                lr_table, beta_table = schedule_tables(cfg, total_steps, table_len)
                                train_step.set_schedules(lr_table, beta_table)
                                epoch_steps = min(steps_per_epoch, total_steps - epoch * steps_per_epoch)
                                policy.epochs = cfg["epochs"]
                                progress.retarget(epoch, cfg["epochs"], epoch_steps)
                                if rt.is_main:  # a resume continues the re-planned run
                                    write_text(run_dir / "config.json", json.dumps(cfg, indent=2) + "\n")
                            if rt.is_main:
                                note = budget.replan_note(step, *pace, before, total_steps)
                                console.print(f"[bold]length:[/] {note}")
                    progress.advance()
                    when = policy.after_step(step, logged=logging, last_batch=last_batch)
                    if when:
                        save(epoch, i + 1)
                    if when == policy.STOP:
                        break
            epoch_seconds = time.perf_counter() - t_epoch
            train_images += epoch_images
            train_seconds += epoch_seconds
            if policy.stopped_early:  # a signal or stop_at_step inside the epoch: last.pt is written
                break

            # ---------------------------------------------------------- validation + checkpoints
            try:  # a signal during validation: last.pt at the epoch's last step, the resumed run validates
                val = validate(raw, stop.until_signal(tb.keep_first(val_loader)), rt, impl=impl,
                               seed=cfg["seed"]).metrics
            except StopSignals.Cut:
                policy.validation_cut(step)
                save(epoch, epoch_steps)
                break
            sinks.write({"kind": "val", "step": step, "epoch": epoch + 1, **val})
            tb.pictures(step, raw, seed=cfg["seed"] + 3, autocast=rt.autocast)  # kept val images, fixed z
            is_best = best_val_elbo is None or val["elbo"] > best_val_elbo
            if is_best:
                best_val_elbo = val["elbo"]
                if rt.is_main:  # a copy on the device, written with the next last.pt
                    best.keep(checkpoint_state(epoch + 1, 0))
            train_rec = [r for r in log.records if r["kind"] == "train" and r["epoch"] == epoch + 1]
            console.print(epoch_table(epoch + 1, cfg["epochs"], train_rec[-1] if train_rec else None, val,
                                      epoch_images / epoch_seconds, progress.gpu_util, is_best))
            when = policy.at_epoch_end(step, epoch + 1)
            if when:
                save(epoch + 1, 0)
            if when == policy.STOP:
                break
    if signum := policy.signalled(step):  # last.pt holds this very step; the test waits for the resumed run
        writer.wait()  # on disk (or its error, a full disk say, raised) before the line that names it
        return _stopped(signum, step, last, rt, run_dir, (train_loader, val_loader))
    # The final checkpoint is written while the test evaluation runs; the summary waits for it.

    # ------------------------------------------------------------------ test: one closing pass
    # One pass over the test split serves three readers: the diagnosing evaluation (model/evaluation: PSNR,
    # SSIM, IWAE bits/dim, active units, blur, regions, attributes, diversity; light settings from config,
    # rank 0 writing evaluation.{json,png}), the test metrics (the validation's numbers, with the worst
    # reconstructions for failures.png) and the pictures' first faces. The loader keeps the run's cache
    # setting although it is read once, so that the test numbers do not move with it: a cached image is
    # uint8 / 255, which can differ from DALI's streamed float in the last bit.
    test_loader = open_loader(cfg, rt, shards, "test", with_keys=True)
    count = test_loader.split.count  # every rank's part once: the test's own count
    test_sums = ElboSums(raw, rt, impl=impl, seed=cfg["seed"] + 1, worst_k=cfg["n_failures"])
    faces = FirstImages(max(cfg["n_reconstructions"], 2) if rt.is_main else 0)
    evaluation = evaluate_model(raw, test_loader, rt, shards=shards, split="test", out_dir=run_dir, total=count,
                                settings=eval_settings(cfg, count, loss_fn.decoder_log_sigma()), console=console,
                                source={"step": step, "data": str(shards)}, also=(test_sums.add, faces))
    test_loader.close()
    test = test_sums.result()
    sinks.write({"kind": "test", "step": step, "epoch": min(cfg["epochs"], epoch + 1), **test.metrics})
    tb.evaluation(step, evaluation or {})
    spent = time.perf_counter() - t_length

    # ------------------------------------------------------------------ artifacts (rank 0 only)
    writer.wait()
    wall = time.perf_counter() - run.t_start
    if rt.is_main:
        _write_pictures(raw, cfg, rt, run_dir, faces, test.failures, shards)
        plot_training_log(log.records, run_dir / "training_log.png", schedule=cfg["kl_schedule"], config=cfg,
                          total_steps=total_steps)
        summary = {
            "test": test.metrics, "best_val_elbo": best_val_elbo, "steps": step, "epochs_done": round(step / steps_per_epoch, 3),
            "stopped_early": policy.stopped_early, "parameters": n_params,
            "checkpoint_seconds": writer.waited, "checkpoint_writes": writer.writes,
            "images_per_s": train_images / train_seconds if train_seconds else None,
            "train_flops_per_image": mfu.flops_per_image if mfu else None,
            "wall_time_s": wall, "runtime": rt.describe(), "loss_impl": impl, "loader": train_loader.backend,
            "world_size": world_size, "evaluation": scalars_of(evaluation),
            # what the budget bought and what it took, from timing the step to the closing pass's end
            "budget": {"train_seconds": budget.seconds, "planned_steps": budget.steps, "steps": total_steps,
                       "checks": replans, "spent_s": spent} if budget else None,
        }
        write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        console.print(epoch_table(None, cfg["epochs"], None, test.metrics, summary["images_per_s"], None, False,
                                  title=f"test ({test.metrics['count']:,} images) after {step} steps, {wall:.0f} s"))
        console.print(evaluation_table(evaluation))
        console.print(f"[bold green]done:[/] {run_dir}")
    tb.hparams(cfg, test.metrics)
    tb.close()  # on the stop and error paths, `closing` closes it
    train_loader.close()
    val_loader.close()
    if rt.distributed:
        torch.distributed.barrier()  # rank 0 has written everything; tear down together
    return 0


def _stopped(signum: int, step: int, last: LastCheckpoint, rt, run_dir: Path, loaders) -> int:
    """End a run stopped by a signal: every rank waits for rank 0's checkpoint, rank 0 says how to resume."""
    for loader in loaders:
        loader.close()
    if rt.distributed:
        torch.distributed.barrier()  # nobody exits (and makes torchrun stop the others) before last.pt is written
    if rt.is_main:
        print(f"stopped by {signal_name(signum)} at step {step}: {last.path} holds that step; resume with: "
              f"{resume_command(run_dir)}", file=sys.stderr, flush=True)
    return 128 + signum


def _with_resume_hint(err: BaseException, last: LastCheckpoint, run_dir: Path) -> BaseException:
    """The one line for a stop without saving (a second Ctrl-C, or a signal outside the training loop)
    or a full disk: what is kept, and the command that continues."""
    how = (f"resume with: {resume_command(run_dir)}" if last.step is not None
           else f"run the same command to start again: {same_command()}")
    if isinstance(err, DiskFull):
        return DiskFull(f"{err}; {last.describe()}; free some space, then {how}")
    signum = err.signum if isinstance(err, Interrupted) else signal.SIGINT
    return Interrupted(signum, f"stopped by {signal_name(signum)} without saving; {last.describe()}; {how}")


@torch.no_grad()
def _write_pictures(raw, cfg: dict, rt, run_dir: Path, faces: FirstImages, failures, shards: Path) -> None:
    """reconstructions.png, samples.png, interpolation.png, failures.png from the final weights; ``faces``: the
    test split's first images, read along the closing pass."""
    raw.eval()
    gen = torch.Generator(device=rt.device).manual_seed(cfg["seed"] + 2)
    if not faces.full and rt.world_size > 1:  # rank 0's part of a small split holds fewer: read the split's own
        with open_loader(cfg, rt, shards, "test", with_keys=True, whole_split=True, read_once=True) as loader:
            faces = FirstImages(faces.n).read(loader)
    x, keys = faces.batch, faces.keys
    with rt.autocast():
        n = cfg["n_reconstructions"]
        plot_pairs(x[:n].cpu(), raw.reconstruct(x[:n]).cpu(), run_dir / "reconstructions.png",
                   title="test images (top) and reconstructions through the posterior mean (bottom)", labels=keys[:n])
        z = torch.randn(cfg["n_samples"], raw.cfg.latent_dim, generator=gen, device=rt.device)
        plot_samples(raw.decode(z).cpu(), run_dir / "samples.png")
        mu, _ = raw.encode(x[:2])
        t = torch.linspace(0, 1, cfg["n_interpolation"], device=rt.device)[:, None]
        walk = raw.decode((1 - t) * mu[0].float() + t * mu[1].float())
        plot_interpolation(x[0].cpu(), x[1].cpu(), walk.cpu(), run_dir / "interpolation.png", keys=(keys[0], keys[1]))
    pixels = x[0].numel()
    plot_pairs(torch.stack([f.image for f in failures]), torch.stack([f.reconstruction for f in failures]),
               run_dir / "failures.png", title=f"the {len(failures)} worst test reconstructions (sampled z)",
               labels=[f"{f.key}\nMSE {f.value / pixels:.4f}" for f in failures])


if __name__ == "__main__":
    raise SystemExit(main())
