"""The helpline's own knowledge: authored answers in Shona and English, and the caller's intents.

No packaged model writes or reliably hears Shona, so what a caller hears in Shona comes from
here: entries the operator writes and keeps current, matched against what ASR heard (which is
often misspelled), with a confidence threshold so an unsure match asks again instead of guessing.
"""
