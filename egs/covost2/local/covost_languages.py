"""The 15 CoVoST 2 En->X target languages: code -> English name (the ``language`` of the translation task).

Usage: python3 local/covost_languages.py de      # prints "German"; an unknown code is an error listing the valid ones

The BLEU tokeniser is not chosen here: stage 7 (blspkd.scoring.bleu.tokenizer_for_language) picks it from the language
code (13a; 'zh' for zh-CN; 'ja-mecab' for ja when sacrebleu[ja] is installed, else 'char') and records it in the
sacrebleu signature.
"""
from __future__ import annotations

import sys

EN_XX: dict[str, str] = {
    "de": "German", "ca": "Catalan", "zh-CN": "Chinese", "fa": "Persian", "et": "Estonian",
    "mn": "Mongolian", "tr": "Turkish", "ar": "Arabic", "sv-SE": "Swedish", "lv": "Latvian",
    "sl": "Slovenian", "ta": "Tamil", "ja": "Japanese", "id": "Indonesian", "cy": "Welsh",
}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in EN_XX:
        sys.exit(f"ERROR: unknown CoVoST 2 target language {sys.argv[1:]}; choose one of: {' '.join(EN_XX)}")
    print(EN_XX[sys.argv[1]])
