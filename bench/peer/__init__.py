"""The simplest peer issue 11 compares us with: Django Channels' chat tutorial (part 3, the async
consumer, an in-memory channel layer, one daphne process) with each message saved through the ORM
into Postgres before it is broadcast to the room. It speaks our frame's field names
(``send-message`` in, ``new-message`` out) so that ``bench/load.py --peer`` measures it with
the same generator; nothing else of the tutorial is changed.

    python -m bench.load --peer --users 200 --size 5 --step 100,100,150,150,200,200 --seconds 15
"""
