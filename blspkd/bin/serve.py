"""Talk to a trained model: a web page and an OpenAI-compatible chat endpoint with audio input, on this machine.

Usage:
    python -m blspkd.bin.serve --model egs/mini_espeak/exp/finetune/export        # then open http://127.0.0.1:8000
    python -m blspkd.bin.serve --model exp/finetune --host 0.0.0.0 --port 8080 --api_key "$(openssl rand -hex 16)"

--model: an exported directory (stage 8), a model directory or an experiment dir holding model/ (as for
blspkd.bin.infer). The page (GET /) records from the microphone or takes a file, asks the chosen task or any
instruction, and streams the answer with the audio's duration, the number of speech tokens CIF produced and the
real-time factor; everything it loads comes from this server. POST /v1/chat/completions speaks OpenAI's chat format
with an input_audio content part (base64 WAV, MP3, FLAC, OGG, WebM, ...; at most 30 s) and text parts as the
instruction; "stream": true answers as server-sent events. GET /v1/models names the model (its id is --model as given,
or --served_model_name). The server listens on 127.0.0.1 only unless --host says otherwise, and has no
authentication unless --api_key is given: then every /v1 request must send "Authorization: Bearer KEY" (what OpenAI
clients send from api_key=...). Details: blspkd/serve.py.
"""
from __future__ import annotations

import sys

from blspkd.bin._args import ArgumentParser, cli, opt


def build_parser() -> ArgumentParser:
    p = ArgumentParser("python -m blspkd.bin.serve", __doc__)
    p.add_argument("--model", required=True, help="exported dir, model dir, or experiment dir with model/")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s, this machine only; 0.0.0.0 = every interface)")
    p.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument(*opt("api_key"), dest="api_key",
                   help="require this bearer token on /v1 requests (default: none, no authentication)")
    p.add_argument(*opt("served_model_name"), dest="served_model_name",
                   help="the model id clients send (default: --model as given)")
    p.add_argument(*opt("max_new_tokens"), dest="max_new_tokens", type=int, default=128,
                   help="default and largest max_tokens of a request (default: %(default)s)")
    p.add_argument("--language", default="German", help="the page's default translation target (default: German)")
    p.add_argument(*opt("max_batch_size"), dest="max_batch_size", type=int, default=8,
                   help="waiting non-streamed requests answered together (default: %(default)s)")
    p.add_argument(*opt("max_queue"), dest="max_queue", type=int, default=64,
                   help="requests that may wait; more get HTTP 503 (default: %(default)s)")
    p.add_argument(*opt("log_level"), dest="log_level", default="INFO", help="(default: INFO)")
    return p


@cli
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from blspkd.utils.logging import setup_logging

    setup_logging(args.log_level)
    import uvicorn

    from blspkd.api import SpeechLLM
    from blspkd.serve import create_app
    from blspkd.utils.config import ConfigError

    for name in ("max_new_tokens", "max_batch_size", "max_queue"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.api_key is not None and not args.api_key.strip():
        raise ConfigError("--api_key is empty; give a non-empty key, or leave it out for no authentication")
    llm = SpeechLLM.from_pretrained(args.model, args.device)
    app = create_app(llm, args.served_model_name or args.model, args.api_key, args.max_new_tokens, args.language,
                     args.max_batch_size, args.max_queue)
    print(f"serving {args.model} on http://{args.host}:{args.port}  (page: /, API: /v1/chat/completions"
          f"{', bearer key required' if args.api_key else ', no authentication'})", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower(), access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
