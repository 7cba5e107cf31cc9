"""Embed captions with a char-CNN-RNN text encoder, as the StackGAN demo's
``get_embedding.lua`` does, without Lua, Torch or a GPU.

    python demo/embed.py --text-encoder ENC.t7 --captions FILE.txt --out OUT.t7
    python demo/embed.py --text-encoder ENC.t7 --captions FILE.txt --out OUT.npy
    python demo/embed.py --text-encoder ENC.t7 --dataset data/birds [--force]

ENC.t7 is one of the authors' encoders (``lm_sje_nc4_cub_hybrid_gru18_a1_c512_
0.00070_1_10_trainvalids.txt_iter30000.t7`` for birds, ``lm_sje_flowers_c10_
hybrid_0.00070_1_10_trainvalids.txt_iter16400.t7`` for flowers; README, "Your
own captions").  Every line of FILE.txt is a caption, read as bytes, empty
lines included, as Lua's ``io.lines`` reads it.  OUT.t7 is what
get_embedding.lua saves (``raw_txt``, ``fea_txt``; demo.py takes it as
``--caption_path``); OUT.npy a float32 [N, 1024] array (demo.py takes it with
``--caption_file FILE.txt``).  ``--dataset DIR`` embeds every image's captions
(``DIR/text_c10``) into ``DIR/{train,test}/char-CNN-RNN-embeddings.pickle``
(N x captions x 1024, in filenames.pickle order); an existing file is
replaced only with ``--force``.

ENC may also be a text encoder that ``misc/commands/train_text_encoder.py``
trained (its ``text_encoder.keras``, its run folder, or a folder of runs: the
newest run's; README, "Your own data"), or ``hash``, the bundled encoder of
``misc/data/hash_encoder.py`` that the shapes dataset's embeddings come from.

``--lowercase`` lower-cases A-Z first: a deviation from get_embedding.lua,
whose alphabet has no capitals (they become all-zero columns), for captions
typed with a capital at the start (raw_txt keeps the lines as written).  The
last line reports the speed.
"""

import time

from misc.commands.common import ArgumentParser, run_main
from misc.config import ConfigError
from misc.data.hash_encoder import HASH_ENCODER


def parse_args(argv=None):
    parser = ArgumentParser(
        description="Embed captions with a char-CNN-RNN text encoder (see the module docstring).")
    parser.add_argument("--text-encoder", "--text_encoder", dest="text_encoder", required=True,
                        help="the authors' char-CNN-RNN encoder (.t7), one "
                             "misc/commands/train_text_encoder.py trained"
                             f" (.keras, or its run folder), or '{HASH_ENCODER}' (the bundled "
                             "encoder)")
    parser.add_argument("--captions", default=None, help="a text file, one caption per line")
    parser.add_argument("--out", default=None, help="OUT.t7 (get_embedding.lua's layout) or OUT.npy")
    parser.add_argument("--dataset", default=None,
                        help="a dataset folder: embed its text_c10 captions into train/ and test/")
    parser.add_argument("--force", action="store_true",
                        help="with --dataset: replace existing char-CNN-RNN-embeddings.pickle files")
    parser.add_argument("--lowercase", action="store_true",
                        help="lower-case A-Z before embedding (not done by get_embedding.lua)")
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=None,
                        help="captions per batch (default: misc.nets.char_cnn_rnn.DEFAULT_BATCH_SIZE, 64)")
    return parser.parse_args(argv)


def main(argv=None):
    """Run the command; returns the number of captions embedded."""
    args = parse_args(argv)
    if (args.dataset is None) == (args.captions is None) or (args.captions is None) != (args.out is None):
        raise ConfigError("give --captions FILE.txt --out OUT.t7|OUT.npy, or --dataset DIR.")
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size}: give at least 1.")
    from misc.evaluation.caption_embeddings import check_output, read_caption_file

    if args.captions is not None:
        check_output(args.out)
        captions = read_caption_file(args.captions)
    from misc.commands.startup import start_tensorflow

    start_tensorflow()
    from misc.evaluation.caption_embeddings import caption_encoder, embed_dataset, write_embeddings
    from misc.nets.char_cnn_rnn import DEFAULT_BATCH_SIZE

    description, encode = caption_encoder(args.text_encoder, lowercase=args.lowercase,
                                          batch_size=args.batch_size or DEFAULT_BATCH_SIZE)
    print(description)
    start, cpu_start = time.perf_counter(), time.process_time()
    if args.dataset is not None:
        count = embed_dataset(encode, args.dataset, force=args.force)
    else:
        embeddings = encode(captions)
        write_embeddings(args.out, captions, embeddings)
        print(f"Wrote {args.out}: {len(captions)} captions, embeddings {list(embeddings.shape)}")
        count = len(captions)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    print(f"Embedded {count} captions in {seconds:.1f} s ({cpu_seconds:.1f} s of CPU time): "
          f"{count / max(seconds, 1e-9):.0f} captions/s")
    return count


def cli(argv=None):
    run_main(main, argv)


if __name__ == "__main__":
    cli()
