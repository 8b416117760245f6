import torch, torch.nn as nn

class SE(nn.Module):
    def __init__(self, c):
        super().__init__(); self.fc1 = nn.Conv2d(c, c // 4, 1); self.fc2 = nn.Conv2d(c // 4, c, 1)
    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))

class MyNet(nn.Module):
    """Grouped convs, squeeze-excite and hardswish: written for this trial, not from the zoo."""
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 48, 3, 2, 1), nn.BatchNorm2d(48), nn.Hardswish())
        self.b1 = nn.Sequential(nn.Conv2d(48, 96, 3, 1, 1, groups=4), nn.BatchNorm2d(96), nn.ReLU(), SE(96))
        self.b2 = nn.Sequential(nn.Conv2d(96, 192, 3, 2, 1, groups=8), nn.BatchNorm2d(192), nn.Hardswish(), SE(192))
        self.b3 = nn.Sequential(nn.Conv2d(192, 192, 1), nn.BatchNorm2d(192), nn.ReLU())
        self.head = nn.Linear(192, num_classes)
    def forward(self, x):
        x = self.b3(self.b2(self.b1(self.stem(x))))
        return self.head(x.mean((2, 3)))
