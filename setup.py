from setuptools import setup

BENCHMARK_PLOTS = ["matplotlib>=3.7"]
# The training scripts' metric modules (examples/metrics) compute F1, Matthews and the correlations with these.
EXAMPLE_METRICS = ["scikit-learn>=1.3", "scipy>=1.10"]

setup(
    name="lion-hf",
    version="0.1.0",
    description="LION bidirectional linear-attention models (LION-LIT, LION-D, LION-S) for the Hugging Face stack",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    license_files=["LICENSE"],
    python_requires=">=3.10",
    # modeling/ is the single source of the model code: it ships inside checkpoints as remote code and is
    # installed here as lion_hf.modeling. conversion/ (original checkpoints -> Hub folders) becomes lion_hf.conversion,
    # model_cards/ (the card template) lion_hf.model_cards.
    packages=["lion_hf", "lion_hf.modeling", "lion_hf.conversion", "lion_hf.model_cards"],
    package_dir={"lion_hf.modeling": "modeling", "lion_hf.conversion": "conversion", "lion_hf.model_cards": "model_cards"},
    package_data={"lion_hf.model_cards": ["*.md"]},
    install_requires=[
        "torch>=2.4",
        "transformers>=5.17,<6",
        "safetensors>=0.4.3",
        "huggingface_hub>=1.0",
        "jinja2>=3.1",  # model cards: huggingface_hub's ModelCard.from_template
        "tokenizers>=0.21",
        "accelerate>=1.1",
        "datasets>=4.0",  # no dataset scripts: examples load Hub datasets without trust_remote_code
        "evaluate>=0.4.3",
        "pillow>=10.0",
        "tqdm>=4.66",
    ],
    extras_require={
        "bench": BENCHMARK_PLOTS,
        "examples": [*EXAMPLE_METRICS, *BENCHMARK_PLOTS],
        # Triton runs the fused kernels' tests on the CPU through its interpreter (wheels: Linux only).
        "dev": ["pytest>=8.0", "triton>=3.6,<4; platform_system == 'Linux'", *EXAMPLE_METRICS, *BENCHMARK_PLOTS],
    },
    entry_points={"console_scripts": ["lion-hf=lion_hf.cli:main"]},
)
