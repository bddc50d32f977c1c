# tries: hand-made code: swap a function's __code__ for one that skips its body, build a code object
#   (CodeType / code.replace), and add an audit hook of its own
# problem: HumanEval/2
# expect: refused: object.__setattr__ __code__
    return 0.5


def anything():
    pass
anything.__code__ = (lambda: None).__code__
