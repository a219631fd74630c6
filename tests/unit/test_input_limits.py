"""Input that should be refused is refused with file, line and field (issue 12): YAML alias bombs,
unknown API groups, misspelled apiVersion/kind keys, files without objects, objects larger than the
apiserver or the operator's plan takes, and bad JSONL prompt rows at their real line."""

from __future__ import annotations

import pytest

from cai.data.prompts import PromptSourceError, load_prompts


def test_bad_jsonl_rows_are_reported_at_their_line_after_blank_lines(tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text('{"prompt": "one"}\n\n\n{"prompt": "two"}\n{"text_body": "x"}\n')
    with pytest.raises(PromptSourceError, match=r"line 5 has no prompt column"):
        load_prompts(str(src))
    src.write_text('{"prompt": "one"}\n\n{"prompt": "two",}\n')
    with pytest.raises(PromptSourceError, match=r"line 3: expected valid JSON \(.* at column 18\)"):
        load_prompts(str(src))
    src.write_text('{"prompt": "a", "split": "test"}\n\n{"prompt": "b"}\n7\n')
    with pytest.raises(PromptSourceError, match=r"line 4 is not an object"):
        load_prompts(str(src), split="train")
