import numpy as np

from unlearning.world import WORLD_PRESETS, generate_people
from unlearning.world.portraits import render_portrait


def _arr(im):
    return np.asarray(im, dtype=np.float32)


def test_render_is_deterministic_rgb_of_requested_size():
    ident = generate_people(WORLD_PRESETS["tiny"])[0].identity
    a, b = render_portrait(ident, 5, 64), render_portrait(ident, 5, 64)
    assert a.mode == "RGB" and a.size == (64, 64)
    assert np.array_equal(_arr(a), _arr(b))


def test_views_of_one_person_differ_less_than_different_people():
    people = generate_people(WORLD_PRESETS["tiny"])
    same = np.mean(
        [np.abs(_arr(render_portrait(p.identity, 1)) - _arr(render_portrait(p.identity, 2))).mean() for p in people[:6]]
    )
    assert same > 1.0  # views really differ (pose, crop, light)
    centre = slice(16, 48)
    faces = [_arr(render_portrait(p.identity, 3))[centre, centre] for p in people[:6]]
    between = np.mean([np.abs(faces[i] - faces[j]).mean() for i in range(6) for j in range(i + 1, 6)])
    assert between > 0
