from .builders import F16, SIGMOID_ATOL, Graph, assert_untouched, check_rewrite, decision, sample


def sigmoid_model(dtype=None):
    g = Graph(dtype) if dtype else Graph()
    return g.model({"X": [4, 32]}, [g.node("Sigmoid", ["X"], name="sig")])


def test_sigmoid():
    out, report = check_rewrite(sigmoid_model(), ["com.quake.Sigmoid"], {"X": sample((4, 32))}, atol=SIGMOID_ATOL)
    d = decision(report, "sigmoid")
    assert d.replaced and d.node == "sig" and d.op_type == "Sigmoid"
    assert out.graph.node[0].name == "sig/quake_Sigmoid"


def test_float16():
    check_rewrite(
        sigmoid_model(F16), ["com.quake.Sigmoid"], {"X": sample((4, 32), "float16")}, atol=SIGMOID_ATOL + 5e-4
    )


def test_not_selected():
    assert_untouched(sigmoid_model(), "sigmoid", "sigmoid is not among the selected ops", ops=frozenset({"exp"}))
