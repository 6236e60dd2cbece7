"""Grading of the exercise notebooks: what the checks compare against, and what a student cannot use.

* :mod:`.expected` computes every check's expected values from the formulas, with its own code: it
  never calls the library function the exercise asks a student to write, so an answer that delegates to
  the library gains nothing from agreeing with it.
* :mod:`.guard` makes the library's own implementation of the piece being checked unavailable while
  the student's answer runs (calling it, under any name, fails the check with a message).
* :mod:`.hidden` holds the cases a teacher grades with that are not in the notebooks; it is left out
  of the student bundle (``make student``).
* :mod:`.grade` is ``hsbs grade``: execute submitted notebooks headless and write one score table.
"""
