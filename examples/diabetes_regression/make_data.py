"""Write diabetes.csv from the copy of the diabetes data that ships inside scikit-learn.

442 rows: 10 float features (age, sex, bmi, bp, s1..s6, already centred and scaled by scikit-learn) and the
float target ``progression`` (disease progression one year later, 25..346). Nothing is downloaded.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sklearn.datasets import load_diabetes


def main(folder: Path) -> Path:
    frame = load_diabetes(as_frame=True).frame.rename(columns={"target": "progression"})
    path = folder / "diabetes.csv"
    frame.to_csv(path, index=False)
    return path


if __name__ == "__main__":
    print(main(Path(sys.argv[1] if len(sys.argv) > 1 else ".")))
