"""The tutorial's ``ChatConsumer`` (part 3, async), saving each message before its broadcast."""

import json
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from bench.peer.models import Message


@database_sync_to_async
def save(room: str, sender: str, content: str) -> Message:
    return Message.objects.create(room=room, sender=sender, content=content)


class ChatConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        self.room_name = self.scope["url_route"]["kwargs"]["room_name"]
        self.room_group_name = f"chat_{self.room_name}"
        self.user = parse_qs(self.scope["query_string"].decode()).get("user", [""])[0]
        await self.channel_layer.group_add(self.room_group_name, self.channel_name)
        await self.accept()

    async def disconnect(self, close_code):
        await self.channel_layer.group_discard(self.room_group_name, self.channel_name)

    async def receive(self, text_data):
        data = json.loads(text_data)
        message = await save(self.room_name, self.user, data["content"])
        await self.channel_layer.group_send(
            self.room_group_name,
            {
                "type": "chat.message",
                "messageId": str(message.id),
                "tempMessageId": data["tempMessageId"],
                "senderId": self.user,
                "content": message.content,
            },
        )

    async def chat_message(self, event):
        await self.send(
            text_data=json.dumps(
                {
                    "type": "new-message",
                    "messageId": event["messageId"],
                    "tempMessageId": event["tempMessageId"],
                    "senderId": event["senderId"],
                    "content": event["content"],
                }
            )
        )
