"""YAML documents for tests: a billion laughs, refused by every path that reads YAML."""

from __future__ import annotations

#: An application descriptor whose metadata is nine lists of nine aliases of the list
#: before: 9^9 values in 478 bytes.
LAUGHS = """\
name: lol
services:
  - name: a
    runtime: host
    command: [sh]
    metadata:
      a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
      b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
      c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
      d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
      e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
      f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
      g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
      h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
      i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""
