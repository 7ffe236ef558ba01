"""``histoseg serve``: registered into the main CLI without importing torch or FastAPI.

    histoseg serve [--host 127.0.0.1] [--port 8765] [--device auto] [--token-file PATH]
                   [--slides DIR] [--model CKPT ...] [--max-body-mb N] [--no-batching]
"""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    s = sub.add_parser("serve", help="serve the models over HTTP for napari on other machines",
                       description="An HTTP server (FastAPI + uvicorn; OpenAPI page at /docs) that loads the "
                                   "models once on this machine's device and serves tumour segmentation, nuclei, "
                                   "benign/malignant classification, explanations and fine-tune jobs. Listens on localhost unless given --host and a token.")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only); "
                                                        "any other needs --token-file")
    s.add_argument("--port", type=int, default=8765)
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="auto: cuda (half precision), then mps, then cpu")
    s.add_argument("--token-file", help="file holding the bearer token clients must send")
    s.add_argument("--slides", help="folder of slides the server may read for /segment-slide (nothing outside it)")
    s.add_argument("--model", action="append", default=[], metavar="CKPT",
                   help="a .safetensors checkpoint of any task to serve as well as the bundled models (repeatable)")
    s.add_argument("--max-body-mb", type=float, default=256.0, help="largest request body (default 256 MB)")
    s.add_argument("--no-batching", action="store_true", help="do not stack concurrent requests into one pass")
    s.add_argument("--batch-wait-ms", type=float, default=5.0, help="longest a batch waits for company (default 5)")
    s.add_argument("--workdir", help="folder for uploads and fine-tune jobs (default: a new temporary folder)")
    s.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    from napari_histoseg.server.security import SecurityError, check_bind, read_token

    try:
        token = read_token(args.token_file) if args.token_file else None
        check_bind(args.host, token)
    except SecurityError as e:
        raise SystemExit(f"histoseg serve: {e}") from None
    if args.slides and not Path(args.slides).is_dir():
        raise SystemExit(f"histoseg serve: --slides {args.slides} is not a folder")

    import uvicorn

    from napari_histoseg.server.app import ServerConfig, create_app

    config = ServerConfig(device=args.device, token=token, slides=Path(args.slides) if args.slides else None,
                          models=[Path(m) for m in args.model], max_body_mb=args.max_body_mb,
                          batching=not args.no_batching, batch_wait_ms=args.batch_wait_ms,
                          workdir=Path(args.workdir) if args.workdir else None)
    app = create_app(config)
    store = app.state.store

    names = ", ".join(f"{e.ref} ({e.model.description} on {e.model.device.type})" for e in store.entries.values()) or "none"
    print(f"histoseg serve: http://{args.host}:{args.port} on {store.device.type}"
          f"{' (half precision)' if store.device.type == 'cuda' else ''}; models: {names}; "
          f"token {'required' if token else 'not required (localhost only)'}; API page /docs", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
