"""Issue 10.13: a Lightning-style `train_dataloader(self)` returning a plain DataLoader works and
resumes exactly; a watched metric that is never logged gets a warning."""
import io

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import traind
from traind.jobs.runtime.data import DataPosition, resumable_loader
from traind.jobs.training.datamodule import train_loader


class Plain(traind.DataModule):
    def __init__(self, shuffle=True):
        gen = torch.Generator().manual_seed(0)
        self.data = TensorDataset(torch.randn(100, 4, generator=gen), torch.randint(2, (100,), generator=gen))
        self.shuffle_plain = shuffle

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=8, shuffle=self.shuffle_plain, drop_last=True)


def order(loader):
    return [batch[0][:, 0].tolist() for batch in loader]


def test_a_plain_dataloader_becomes_a_resumable_one_with_the_same_settings():
    dm = Plain()
    position = DataPosition(shuffle_seed=7, epoch=2, batches_consumed=3)
    got = train_loader(dm, position)
    want = resumable_loader(dm.data, 8, position=position, shuffle=True, drop_last=True)
    assert order(got) == order(want) and len(order(got)) == 12 - 3      # 100 // 8 = 12, 3 consumed
    unshuffled = train_loader(Plain(shuffle=False), DataPosition(shuffle_seed=7))
    assert order(unshuffled)[0] == dm.data.tensors[0][:8, 0].tolist()


class Net(traind.TrainModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(4, 2)

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_watching_a_metric_that_is_never_logged_warns_once(tmp_path, monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    trainer = traind.Trainer(max_steps=30, run_dir=tmp_path / "run",
                             callbacks=[traind.EarlyStopping("val_loss", patience=2)])
    trainer.fit(Net(), Plain())
    warnings = [line for line in stream.getvalue().splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "EarlyStopping watches 'val_loss', which is never logged" in warnings[0]
