from django.db import models


class Message(models.Model):
    room = models.CharField(max_length=64, db_index=True)
    sender = models.CharField(max_length=64)
    content = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
