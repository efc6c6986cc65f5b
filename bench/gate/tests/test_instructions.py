"""The instruction counter's arithmetic on synthetic dump totals (stdlib unittest)."""

import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import instructions  # noqa: E402

FIRST = [190, 205, 180, 16, 9]
EST = [83, 60, 74]


def calls(first_loops=3, est_loops=2, warm_est=None):
    """A run as the node benchmark makes it: a first pass and an established pass
    untimed (the latter touching every flow for the first time), then the timed
    loops of each."""
    warm = warm_est if warm_est is not None else [x + 1 for x in EST]
    return FIRST + warm + FIRST * first_loops + EST * est_loops


class Phases(unittest.TestCase):
    def test_finds_one_pass_of_each_phase(self):
        first, est = instructions.node_phases(calls())
        self.assertEqual(first, FIRST)
        self.assertEqual(est, EST)

    def test_an_untimed_established_pass_like_the_timed_ones(self):
        first, est = instructions.node_phases(calls(warm_est=EST))
        self.assertEqual(first, FIRST)
        self.assertEqual(est, EST)

    def test_one_timed_established_loop_is_not_a_period(self):
        with self.assertRaises(ValueError):
            instructions.node_phases(calls(est_loops=1))

    def test_one_timed_first_loop_is_not_a_period(self):
        with self.assertRaises(ValueError):
            instructions.node_phases(FIRST + EST + [1, 2, 3] + EST * 2)

    def test_smallest_period(self):
        self.assertEqual(instructions.smallest_period([5, 1, 2, 1, 2]), 2)
        self.assertEqual(instructions.smallest_period([1, 2, 3]), None)
        self.assertEqual(instructions.smallest_period([7, 7]), 1)


class Parsing(unittest.TestCase):
    def test_step_medians_split_a_round(self):
        # An endpoint removed (about 1.2M) and re-added (about 2.2M), three times.
        each = [1200, 2200, 1300, 2100, 1250, 2300]
        steps = instructions.step_medians(each, 2)
        self.assertEqual(steps, [{"median": 1250, "min": 1200, "max": 1300},
                                 {"median": 2200, "min": 2100, "max": 2300}])
        self.assertEqual([s["median"] for s in instructions.step_medians(each, 1)], [1700.0])

    def test_step_medians_want_whole_rounds(self):
        with self.assertRaises(ValueError):
            instructions.step_medians([1, 2, 3], 2)
        with self.assertRaises(ValueError):
            instructions.step_medians([], 2)

    def test_packets_from_the_node_line(self):
        log = ("node: the plugin's node logic: first 12.0 ns/packet, established 3.2 "
               "ns/packet (1523 of 10000 allowed; 0 verdicts differ from fast)")
        self.assertEqual(instructions.packets_of(log), (1523, 10000))
        with self.assertRaises(ValueError):
            instructions.packets_of("no such line")

    def test_summary_of_a_dump(self):
        self.assertEqual(instructions.summary_of("events: Ir\nsummary: 76141\ntotals: 76141\n"),
                         76141)
        self.assertEqual(instructions.summary_of("events: Ir\n"), 0)


class Command(unittest.TestCase):
    def test_the_counted_program_does_not_execute_itself_again(self):
        full, env = instructions.callgrind_command(
            ["capo-bench", "classify"], "f", "/out", {"PATH": "/bin", "CAPO_HUGE_PAGES": "on"})
        self.assertEqual(env["CAPO_HUGE_PAGES"], "off")
        self.assertEqual(env["PATH"], "/bin")
        self.assertEqual(full[0], "valgrind")
        self.assertEqual(full[-2:], ["capo-bench", "classify"])
        self.assertIn("--toggle-collect=f", full)


if __name__ == "__main__":
    unittest.main()
