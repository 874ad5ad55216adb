"""Applications built on the library — imported only by the CLI (and benchmarks/, tests/):

    demo, demo_report   `mmbert demo`: the end-to-end run and its report
    study               `mmbert study run/report`: the reproduction study and its results page
    bench               `mmbert bench`: the efficiency benchmark
"""
