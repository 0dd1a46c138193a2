"""A tiny Qwen2.5-VL, built offline, for running the real engine (vLLM's CPU build) in tests.

What is real: the architecture class (``Qwen2_5_VLForConditionalGeneration``), the image geometry
(14 px patches, 2x2 merge: a 225x225 image gives 64 image tokens), Qwen's special tokens and their
roles, the Qwen2.5-VL chat template and the Qwen2-VL image processor config. What is not: the
sizes (hidden 128, 2 layers; vision hidden 64, depth 2), the vocabulary (a byte-level BPE of a few
hundred tokens trained here on a fixed text) and the weights (random, seeded). About 1-2 MB; vLLM
on CPU loads it in seconds. Captions from it are gibberish by design.

usage: python -m tests.tiny_qwen OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
            "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
            "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
BPE_VOCAB = 400
# Long enough for enrich's default --max-model-len (8192); vLLM refuses a max_model_len above it.
MAX_POSITIONS = 32768
TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
PREPROCESSOR = {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14,
                "temporal_patch_size": 2, "merge_size": 2,
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711],
                "image_processor_type": "Qwen2VLImageProcessor",
                "processor_class": "Qwen2_5_VLProcessor"}
CORPUS = ("Describe this image in detail. Focus on the main subjects, actions, and setting. "
          "You are a helpful assistant that generates accurate and descriptive captions for images. "
          "A photo of a cat sitting on a red chair near the window, with a dog in the garden. "
          "The quick brown fox jumps over the lazy dog. 0123456789 ") * 20


def _tokenizer(out: Path) -> dict[str, int]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS], trainer)
    base = tok.get_vocab_size()
    tok.add_special_tokens(SPECIALS)
    ids = {s: base + k for k, s in enumerate(SPECIALS)}
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": False, "add_prefix_space": False, "bos_token": None,
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
        "additional_special_tokens": SPECIALS[1:], "chat_template": TEMPLATE,
        "clean_up_tokenization_spaces": False, "errors": "replace",
        "model_max_length": MAX_POSITIONS, "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer"}, indent=2))
    return ids


def build(out: str | Path, *, seed: int = 0) -> Path:
    """Write the model folder (idempotent: an existing complete folder is kept)."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    out = Path(out)
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    ids = _tokenizer(out)
    vocab = ((max(ids.values()) + 1 + 63) // 64) * 64
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": vocab, "hidden_size": 128, "intermediate_size": 256,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
            "max_position_embeddings": MAX_POSITIONS, "rope_theta": 1000000.0,
            "rope_scaling": {"type": "mrope", "mrope_section": [8, 12, 12]},
            "tie_word_embeddings": True, "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2,
            "out_hidden_size": 128, "patch_size": 14, "spatial_merge_size": 2,
            "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [1],
            "in_chans": 3, "tokens_per_second": 2,
        },
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16)
    # Random weights, but greedy decoding (temperature 0) must produce visible text: zero the
    # (tied) output rows of every token that decodes to nothing visible (special tokens, spaces,
    # the padding ids past the tokenizer), so their logits are 0 while the best of the few
    # hundred others is clearly positive. Otherwise a caption can come out empty.
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    special = set(ids.values())
    visible = {i for i in range(tok.get_vocab_size())
               if i not in special and tok.decode([i]).strip().isprintable()
               and tok.decode([i]).strip() and "\ufffd" not in tok.decode([i])}
    with torch.no_grad():
        weight = model.get_output_embeddings().weight
        for i in range(weight.shape[0]):
            if i not in visible:
                weight[i] = 0
    model.save_pretrained(str(out))
    (out / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2))
    (out / "chat_template.json").write_text(json.dumps({"chat_template": TEMPLATE}))
    (out / "generation_config.json").write_text(json.dumps({
        "bos_token_id": ids["<|endoftext|>"], "pad_token_id": ids["<|endoftext|>"],
        "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]]}))
    return out


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.tiny_qwen OUT_DIR")
    path = build(sys.argv[1])
    print(f"wrote {path} ({sum(f.stat().st_size for f in path.iterdir()) / 1e6:.1f} MB)")
