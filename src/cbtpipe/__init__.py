"""cbtpipe: the library behind the CBT fine-tuning pipeline.

Entry scripts in ``scripts/`` read Snakemake's ``snakemake`` object and call one function of this
package; the tests call the same functions.
"""

__version__ = "0.1.0"
