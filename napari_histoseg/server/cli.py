"""``histoseg serve``: registered into the main CLI without importing torch or FastAPI.

    histoseg serve [--host 127.0.0.1] [--port 8765] [--device auto] [--token-file PATH]
                   [--slides DIR] [--model CKPT ...] [--max-body-mb N] [--max-pixels N]
                   [--max-models N] [--max-jobs N] [--max-busy N] [--workdir DIR] [--no-batching]
"""

from __future__ import annotations

from pathlib import Path

from napari_histoseg.io.checks import float_arg, int_arg


def register(sub) -> None:
    s = sub.add_parser("serve", help="serve the models over HTTP for napari on other machines",
                       description="An HTTP server (FastAPI + uvicorn; OpenAPI page at /docs) that loads the "
                                   "models once on this machine's device and serves tumour segmentation, nuclei, "
                                   "benign/malignant classification, explanations and fine-tune jobs. Listens on localhost unless given --host and a token.")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only); "
                                                        "any other needs --token-file")
    s.add_argument("--port", type=int_arg(1, 65535), default=8765, help="TCP port, 1-65535 (default 8765)")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="auto: cuda (half precision), then mps, then cpu")
    s.add_argument("--token-file", help="file holding the bearer token clients must send")
    s.add_argument("--slides", help="folder of slides the server may read for /segment-slide (nothing outside it)")
    s.add_argument("--model", action="append", default=[], metavar="CKPT",
                   help="a .safetensors checkpoint of any task to serve as well as the bundled models (repeatable)")
    s.add_argument("--max-body-mb", type=float_arg(0, 65536, lo_open=True), default=256.0,
                   help="largest request body in MB (default 256; there is always a limit)")
    s.add_argument("--max-pixels", type=int_arg(4096, 1 << 34), default=4096 * 4096,
                   help="most pixels one request may send or ask for (default 4096 x 4096)")
    s.add_argument("--max-models", type=int_arg(1, 1000), default=8,
                   help="uploaded and fine-tuned models held loaded, the least recently used unloaded first "
                        "(default 8; the bundled and --model ones are always held)")
    s.add_argument("--max-jobs", type=int_arg(1, 64), default=1, help="fine-tune jobs at a time (default 1)")
    s.add_argument("--max-busy", type=int_arg(1, 4096), default=32,
                   help="requests computing or waiting for the device at once; more are answered 503 with "
                        "Retry-After, so a burst cannot hold unbounded decoded arrays (default 32)")
    s.add_argument("--no-batching", action="store_true", help="do not stack concurrent requests into one pass")
    s.add_argument("--batch-wait-ms", type=float_arg(0, 10000), default=5.0,
                   help="longest a batch waits for company (default 5)")
    s.add_argument("--workdir", help="an existing folder; uploads and fine-tune jobs go in its histoseg-serve/ "
                                     "(finished jobs are found again after a restart; default: a new temporary folder)")
    s.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    from napari_histoseg.server.security import SecurityError, check_bind, read_token

    try:
        token = read_token(args.token_file) if args.token_file else None
        check_bind(args.host, token)
    except SecurityError as e:
        raise SystemExit(f"histoseg serve: {e}") from None
    for flag, folder in (("--slides", args.slides), ("--workdir", args.workdir)):
        if folder and not Path(folder).is_dir():
            raise SystemExit(f"histoseg serve: {flag} {folder} is not a folder"
                             + (" (it is a file)" if Path(folder).exists() else " (it does not exist)"))

    import uvicorn

    from napari_histoseg.server.app import ServerConfig, create_app

    config = ServerConfig(device=args.device, token=token, slides=Path(args.slides) if args.slides else None,
                          models=[Path(m) for m in args.model], max_body_mb=args.max_body_mb,
                          max_region_px=args.max_pixels, max_models=args.max_models, max_jobs=args.max_jobs, max_busy=args.max_busy,
                          batching=not args.no_batching, batch_wait_ms=args.batch_wait_ms,
                          workdir=Path(args.workdir) if args.workdir else None)
    app = create_app(config)
    store = app.state.store

    names = ", ".join(f"{e.ref} ({e.model.description} on {e.model.device.type})" for e in store.entries.values()) or "none"
    print(f"histoseg serve: http://{args.host}:{args.port} on {store.device.type}"
          f"{' (half precision)' if store.device.type == 'cuda' else ''}; models: {names}; "
          f"token {'required' if token else 'not required (localhost only)'}; API page /docs", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    except OSError as e:   # the port is taken, or not ours to bind
        raise SystemExit(f"histoseg serve: cannot listen on {args.host}:{args.port} ({e.strerror or e})") from None
    return 0
