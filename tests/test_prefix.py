"""The one common-prefix rule (ray_rm/prefix.py) on token ids, characters and chat turns."""
from ray_rm.prefix import common_prefix_len


def test_token_prefix_keeps_one_token_each_when_asked():
    assert common_prefix_len([[1, 2, 3], [1, 2, 4]], keep_own=1) == 2
    assert common_prefix_len([[1, 2], [1, 2, 3]], keep_own=1) == 1  # [1, 2] must keep its last token
    assert common_prefix_len([[5], [5, 6]], keep_own=1) == 0
    assert common_prefix_len([[1, 2, 3], [1, 2, 3], [1, 9]], keep_own=1) == 1
    assert common_prefix_len([[1, 2], [1, 2, 3]]) == 2  # uncapped: a whole sequence can be the prefix


def test_any_sequence_type_and_edge_cases():
    assert common_prefix_len(("Human: hi. Assistant: yes", "Human: hi. Assistant: no")) == 22
    turns = [(("user", "q"), ("assistant", "a")), (("user", "q"), ("assistant", "b"))]
    assert common_prefix_len(turns, keep_own=1) == 1
    assert common_prefix_len([]) == 0 and common_prefix_len([[4, 5]]) == 2 and common_prefix_len([[4]], 1) == 0
    assert common_prefix_len([(), (1,)]) == 0
